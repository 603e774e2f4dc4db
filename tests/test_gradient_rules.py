"""Our gradient rules (compiler/gradients/), op by op and in MobileNet-style blocks, equal torch autograd.

Each op is what torch exports for it (torch.onnx, opset 17), imported the way the pipeline imports it
(constant folding, our importer) and differentiated in isolation: loss(x, dY) = sum(op(x) * dY), whose
gradient in x is the op's backward applied to dY.  All cases share one compiled module.  Then blocks built
from these ops go through ``compile_model``: full and skeleton gradients, float64, against torch.
"""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import tvm
from onnx import TensorProto, helper
from tvm import relax
from tvm.relax.utils import copy_with_new_vars

from fedskel.compiler import gradients  # noqa: F401  (registers the rules under test)
from fedskel.compiler.onnx_folding import fold_constants
from fedskel.compiler.onnx_import import import_onnx
from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.zoo import export_onnx
from fedskel.runtime import load

from onnx_models import as_float64
from test_compiler_gradients import FLOAT64_TOLERANCE, TorchReference, check_against_torch
from torch_oracle import nn_conv_outputs

# torch's float64 HardSigmoid backward multiplies by the float32 1/6 (``1.0f / 6.0f``): 3e-8 from the
# derivative of its own forward, which is what we compute
HARD_SIGMOID_TOLERANCE = 1e-7
ROUNDING = 1e-12

SHAPES = [(2, 4, 5, 5), (1, 2, 6, 7), (3, 6, 1, 1)]


def _split(x):
    first, second = torch.split(x, [1, int(x.shape[1]) - 1], dim=1)  # int(): static sizes export as Split
    return torch.cat([second, 2 * first], 1)


OPS = {
    "relu": F.relu,  # on a grid of halves too: torch passes no gradient through an input of exactly 0
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),  # and the slope's gradient through one
    "squeeze": lambda x: x[:, :1].squeeze(1) * 2,
    "unsqueeze": lambda x: x.unsqueeze(2) * 2,
    "gather": lambda x: x[:, 0] * 3,  # a scalar index
    "gather_repeated": lambda x: x[:, [1, 0, 1]] * 3,  # a repeated index adds up
    "transpose": lambda x: x.transpose(2, 3) * 2,
    "sub_div": lambda x: (x - 1.5) / 2.5,
    "tanh": torch.tanh,
    "clamp_0_6": lambda x: torch.clamp(x, 0, 6),  # Cast + Clip
    "clamp_min_only": lambda x: torch.clamp(x, min=-0.5),
    "relu6": F.relu6,  # hardtanh: excludes the bounds, unlike our rule, so no inputs on them here
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,  # Sigmoid x Mul
    "chunk": lambda x: torch.chunk(x, 2, dim=1)[1] * 3,  # Slice
    "strided_slice": lambda x: x[:, 1:, 1::2, ::3],
    "split": _split,  # Split + Concat
    "mean_hw": lambda x: x.mean((2, 3), keepdim=True),  # ReduceMean
    "mean_c": lambda x: x.mean(1),
    "cast": lambda x: x.to(x.dtype) * 2,  # Cast
    "pad": lambda x: F.pad(x, (1, 2, 0, 1)),
    "pad_value": lambda x: F.pad(x, (0, 1, 2, 0), value=0.5),
    "concat3": lambda x: torch.cat([x, 2 * x, x[:, :1]], 1),
}


# the ONNX op each case is there for, checked in the export
EXPORTED_AS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "squeeze": "Squeeze", "unsqueeze": "Unsqueeze",
               "gather": "Gather", "gather_repeated": "Gather", "transpose": "Transpose", "sub_div": "Div",
               "tanh": "Tanh", "clamp_0_6": "Cast", "clamp_min_only": "Clip", "relu6": "Clip", "hardswish": "HardSwish",
               "hardsigmoid": "HardSigmoid", "silu": "Sigmoid", "chunk": "Slice", "strided_slice": "Slice",
               "split": "Split", "mean_hw": "ReduceMean", "mean_c": "ReduceMean", "cast": "Cast", "pad": "Pad",
               "pad_value": "Pad", "concat3": "Concat", "concat1": "Concat"}


class _Op(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x)


def _torch_onnx(op, shape):
    """What torch exports for ``op``, as a float64 graph."""
    return as_float64(onnx.load_from_string(export_onnx(_Op(op), shape[1:], shape[0])))


def _one_input_concat(shape):
    """densenet's first dense layer: a Concat of one tensor (torch's exporter drops ours)."""
    x = helper.make_tensor_value_info("input", TensorProto.DOUBLE, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, list(shape))
    graph = helper.make_graph([helper.make_node("Concat", ["input"], ["y"], axis=1)], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _loss_function(name, model):
    """loss(x, dY) = sum(forward(x) * dY), forward imported from ``model`` as the pipeline imports it."""
    fold_constants(model)
    forward = copy_with_new_vars(import_onnx(model, "float64")["main"])
    dy = relax.Var("dy", forward.ret_ty)
    bb = relax.BlockBuilder()
    with bb.function(name, [*forward.params, dy]):
        with bb.dataflow():
            for block in forward.body.blocks:
                for binding in block.bindings:
                    bb.emit_normalized(binding)
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(forward.body.body, dy)))
        bb.emit_func_output(loss)
    return bb.get()[name]


CASES = [(name, shape) for name in OPS for shape in SHAPES] + [("concat1", shape) for shape in SHAPES]


@pytest.fixture(scope="module")
def op_vm():
    module = tvm.IRModule()
    for i, (name, shape) in enumerate(CASES):
        model = _one_input_concat(shape) if name == "concat1" else _torch_onnx(OPS[name], shape)
        assert EXPORTED_AS[name] in {node.op_type for node in model.graph.node}, name
        module[f"f{i}"] = _loss_function(f"f{i}", model)
    for i in range(len(CASES)):
        module = relax.transform.Gradient(f"f{i}", require_grads=[module[f"f{i}"].params[0]])(module)
    return relax.VirtualMachine(tvm.compile(module, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_op_gradient_equals_torch(op_vm, index):
    name, shape = CASES[index]
    rng = np.random.default_rng(index)
    x = 4 * rng.standard_normal(shape)
    if name.startswith("clamp") or name.endswith("relu"):  # on a grid of halves: many inputs sit exactly on a bound
        x = np.round(2 * x) / 2
    x_torch = torch.tensor(x, requires_grad=True)
    y = OPS[name](x_torch) if name != "concat1" else x_torch * 1
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    want = x_torch.grad.numpy()
    loss, (grad,) = op_vm[f"f{index}_adjoint"](tvm.runtime.tensor(x), tvm.runtime.tensor(dy))
    assert float(loss.numpy()) == pytest.approx(float((y.detach().numpy() * dy).sum()), rel=ROUNDING)
    tolerance = HARD_SIGMOID_TOLERANCE if name == "hardsigmoid" else ROUNDING
    assert np.abs(grad.numpy() - want).max() <= tolerance * max(np.abs(want).max(), 1e-300)


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block with ReLU6 written as torch.clamp(..., 0, 6) (exports Cast + Clip)."""

    def __init__(self, channels, expand=3):
        super().__init__()
        hidden = channels * expand
        self.expand = torch.nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(hidden)
        self.depthwise = torch.nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, groups=hidden, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(hidden)
        self.project = torch.nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.clamp(self.bn1(self.expand(x)), 0, 6)
        y = F.relu6(self.bn2(self.depthwise(y)))
        return x + self.bn3(self.project(y))


class MobileNetV2Block(torch.nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.block = InvertedResidual(8)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        y = self.block(torch.clamp(self.bn(self.stem(x)), 0, 6))
        return self.fc(y.mean((2, 3)))


class ShuffleV3Block(torch.nn.Module):
    """MobileNetV3 / ShuffleNetV2 ops: HardSwish, a squeeze-excite gate (ReduceMean, HardSigmoid),
    torch.chunk, channel shuffle, F.pad and a strided slice."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branch = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.squeeze = torch.nn.Conv2d(8, 4, 1)
        self.excite = torch.nn.Conv2d(4, 8, 1)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        y = F.hardswish(self.stem(x))
        left, right = torch.chunk(y, 2, dim=1)
        y = torch.cat([left, F.silu(self.branch(right))], 1)
        batch, channels, h, w = y.shape
        y = y.view(batch, 2, channels // 2, h, w).transpose(1, 2).reshape(batch, channels, h, w)
        gate = F.hardsigmoid(self.excite(F.relu(self.squeeze(y.mean((2, 3), keepdim=True)))))
        y = F.pad(y * gate, (1, 0, 0, 1))[:, :, ::2, 1::2]
        return self.fc(y.mean((2, 3)))


class TinyYoloBlock(torch.nn.Module):
    """Darknet's pattern (Tiny-YOLO backbones): CONV, BatchNorm, LeakyReLU(0.1), max-pool."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x):
        y = F.max_pool2d(F.leaky_relu(self.bn(self.conv1(x)), 0.1), 2)
        return self.fc(F.leaky_relu(self.conv2(y), 0.1).mean((2, 3)))


@pytest.mark.parametrize("block,tolerance", [(MobileNetV2Block, FLOAT64_TOLERANCE), (ShuffleV3Block, HARD_SIGMOID_TOLERANCE),
                                             (TinyYoloBlock, FLOAT64_TOLERANCE)])
def test_block_gradients_equal_torch(tmp_path, block, tolerance):
    torch.manual_seed(0)
    module = block()
    path = tmp_path / "block.onnx"
    onnx.save(as_float64(onnx.load_from_string(export_onnx(module, (3, 9, 9), 4))), str(path))
    compile_model(str(path), tmp_path / "block.fsk", ratio=0.5)
    check_against_torch(load(tmp_path / "block.fsk"), TorchReference(module.double().train(), nn_conv_outputs, tolerance=tolerance))
