"""The test oracle: torch autograd, with dY zeroed outside the skeleton for the skeleton backward.

``skeleton_grads`` masks the output gradient of every CONV layer by a forward hook, which is exactly the
FedSkel definition (FEDSKEL.md) the compiled skeleton backward must reproduce at a fraction of the FLOPs.
Zoo models are torch modules already; ONNX files built by the tests run through ``OnnxTorchModule``, a
small reference evaluator of the ops those files use.
"""

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


TIE_MARGIN = 1e-6  # a ReLU input this close to 0 (relative to its tensor's largest) is within float32 rounding of it


class ReluDecisions:
    """ReLU as torch computes it, with chosen units' decisions reversed, recording the inputs it saw.

    Why: a ReLU input within float32 rounding of 0 lands on either side of it, depending on summation order
    (resnet18 at batch 8 has ~16 units within 1e-6 of their tensor's scale).  A float32 build that lands on
    the other side of one such tie than float64 has a gradient that is float64's with that unit's decision
    reversed: correct for its rounding, but far from float64's.  ``flips``: {(call, flat unit index)}, the
    call counted over the context (so a whole training run has one numbering).
    """

    def __init__(self, flips=frozenset()):
        self.flips = frozenset(flips)
        self.inputs = []

    def __enter__(self):
        self._saved = torch.relu, torch.Tensor.relu, F.relu
        torch.relu = torch.Tensor.relu = lambda z: self._relu(z)  # a function: as a method it binds z
        F.relu = lambda z, inplace=False: self._relu(z)
        return self

    def __exit__(self, *exc):
        torch.relu, torch.Tensor.relu, F.relu = self._saved

    def _relu(self, z):
        call = len(self.inputs)
        self.inputs.append(z.detach())
        passes = (z > 0).reshape(-1).clone()
        for flip_call, unit in self.flips:
            if flip_call == call:
                passes[unit] = ~passes[unit]
        return z * passes.reshape(z.shape).to(z.dtype)

    def ties(self, margin=TIE_MARGIN, most=32):
        """The (call, unit) pairs nearest 0, at most ``most``, within ``margin`` of each call's largest |input|."""
        found = []
        for call, z in enumerate(self.inputs):
            magnitude = z.abs().reshape(-1)
            close = torch.nonzero(magnitude <= margin * magnitude.max()).reshape(-1)
            found += [(float(magnitude[u] / magnitude.max()), call, int(u)) for u in close]
        return [(call, unit) for _, call, unit in sorted(found)[:most]]


def _mask_hook(index, channels):
    mask = torch.zeros(channels)
    mask[torch.as_tensor(np.asarray(index), dtype=torch.long)] = 1.0
    return lambda grad: grad * mask.view(1, -1, 1, 1)


def torch_gradients(module, conv_outputs, x, y, skeleton=None, names=None):
    """{param name: grad} of mean cross-entropy; ``conv_outputs(module, x)`` returns (logits, {weight: Y})."""
    module.zero_grad(set_to_none=True)
    logits, outputs = conv_outputs(module, torch.from_numpy(x))
    if skeleton is not None:
        for weight_name, index in skeleton.items():
            y_conv = outputs[weight_name]
            y_conv.register_hook(_mask_hook(index, y_conv.shape[1]))
    loss = F.cross_entropy(logits, torch.from_numpy(np.asarray(y, dtype=np.int64)))
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().numpy().copy() for n, p in module.named_parameters() if p.grad is not None}


def nn_conv_outputs(module, x):
    """Run a torch nn.Module, capturing each nn.Conv2d output by its weight's parameter name."""
    captured, handles = {}, []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Conv2d):
            handles.append(sub.register_forward_hook(lambda m, i, o, key=f"{name}.weight": captured.__setitem__(key, o)))
    try:
        return module(x), captured
    finally:
        for handle in handles:
            handle.remove()


class ExactHardSigmoid(torch.nn.Module):
    """HardSigmoid from exact primitives: torch's own float64 backward multiplies by the float32 1/6
    (3e-8 off the derivative of its forward), which a float64 oracle held to 1e-9 cannot use.  Written as
    ONNX's HardSigmoid (a clip of x / 6 + 1/2 to [0, 1]), so its clip sees what the build's does."""

    def forward(self, x):
        return F.hardtanh(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


class ExactHardSwish(torch.nn.Module):
    """HardSwish as ONNX's (x times a clip of x + 3 to [0, 6], over 6), from exact primitives likewise."""

    def forward(self, x):
        return x * (F.relu6(x + 3.0) / 6.0)


def replace_submodule(module, name, replacement):
    """Put ``replacement`` where ``module``'s submodule ``name`` (dotted) is."""
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, replacement)


def with_exact_hard_activations(module):
    """``module`` with every nn.Hardsigmoid / nn.Hardswish replaced by its exact-derivative twin (same values)."""
    exact = {torch.nn.Hardsigmoid: ExactHardSigmoid, torch.nn.Hardswish: ExactHardSwish}
    for name, sub in list(module.named_modules()):
        if type(sub) in exact:
            replace_submodule(module, name, exact[type(sub)]())
    return module


class OnnxTorchModule(torch.nn.Module):
    """Evaluate an ONNX graph with torch ops, initializers as trainable parameters (train-mode BN)."""

    def __init__(self, model):
        super().__init__()
        self.graph = model.graph
        self.values = torch.nn.ParameterDict()
        self.buffers_ = {}
        stats = {n.input[i] for n in self.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
        self.names = {}
        for init in self.graph.initializer:
            array = torch.from_numpy(numpy_helper.to_array(init).copy())
            if init.name in stats or not array.is_floating_point():
                self.buffers_[init.name] = array
            else:
                key = f"p{len(self.names)}"
                self.names[key] = init.name
                self.values[key] = torch.nn.Parameter(array)

    def named_parameters(self, *args, **kwargs):
        for key, value in self.values.items():
            yield self.names[key], value

    def forward(self, x):
        return self.run(x)[0]

    def run(self, x):
        env = {self.names[k]: v for k, v in self.values.items()}
        env.update(self.buffers_)
        env[self.graph.input[0].name] = x
        conv_outputs = {}
        for node in self.graph.node:
            args = [env[i] for i in node.input if i]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            out = getattr(self, f"_{node.op_type}")(args, attrs)
            if node.op_type == "Conv":
                conv_outputs[node.input[1]] = out
            env[node.output[0]] = out
        return env[self.graph.output[0].name], conv_outputs

    @staticmethod
    def _Conv(args, a):
        pads = a.get("pads", [0, 0, 0, 0])
        x = F.pad(args[0], (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(x, args[1], args[2] if len(args) > 2 else None, a.get("strides", [1, 1]), 0,
                        a.get("dilations", [1, 1]), a.get("group", 1))

    @staticmethod
    def _BatchNormalization(args, a):
        x, gamma, beta, mean, var = args
        return F.batch_norm(x, mean.clone(), var.clone(), gamma, beta, True, 1 - a.get("momentum", 0.9), a.get("epsilon", 1e-5))

    @staticmethod
    def _Relu(args, a):
        return F.relu(args[0])

    @staticmethod
    def _MaxPool(args, a):
        return F.max_pool2d(args[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]))

    @staticmethod
    def _GlobalAveragePool(args, a):
        return args[0].mean(dim=(2, 3), keepdim=True)

    @staticmethod
    def _Flatten(args, a):
        return torch.flatten(args[0], a.get("axis", 1))

    @staticmethod
    def _Add(args, a):
        return args[0] + args[1]

    @staticmethod
    def _Gemm(args, a):
        weight = args[1].t() if a.get("transB", 0) else args[1]
        return args[0] @ weight + (args[2] if len(args) > 2 else 0)


def onnx_conv_outputs(module, x):
    return module.run(x)
