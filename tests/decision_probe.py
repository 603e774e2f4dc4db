"""A float32 build's own ReLU, Clip and max-pool decisions, and float64 torch gradients that take them.

Why: in a deep float32 net thousands of ReLU, ReLU6 and max-pool inputs lie within rounding of their
threshold (0, a clip bound, the window's runner-up), and which side each lands on depends on summation
order.  Past a few such ties torch's own float32 gradients are 17-27% off float64 (densenet121, googlenet,
regnet_x_400mf at 3x64x64), so neither float64 nor torch float32 is an answer a float32 build can be held to.
What is: float64 arithmetic on *the build's* decisions.  ``with_decision_probes`` adds to a training module
a twin of each gradient function that also returns the input of every ReLU, Clip and max-pool of its
forward (same graph, same kernels, one call: the decisions and the gradients come from the same run), and
``BuildDecisions`` replays those decisions in torch: ReLU passes where the build's input was > 0, Clip where
it was inside its bounds (bounds included, as compiler/gradients/clip.py), max-pool takes the build's
argmax (the first maximum of the window, as the gradient rule does).  What remains between the two is
float32 rounding of smooth arithmetic, which the issue's 1e-4 of each tensor's largest bounds.
"""

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax
from tvm.relax.utils import copy_with_new_vars

from test_compiler_gradients import _errors, _scales
from torch_oracle import nn_conv_outputs, torch_gradients

PROBED_OPS = {"relax.nn.relu": "relu", "relax.clip": "clip", "relax.nn.max_pool2d": "max_pool2d"}
KINDS = tuple(PROBED_OPS.values())
PROBE_SUFFIX = "_probe"
MATCH_TOLERANCE = 1e-3  # of a tensor's largest |value|: float32 forwards here differ from float64 by < 1e-4


def with_decision_probes(module, names=("gradients", "gradients_skel")):
    """``module`` plus NAME_probe for each of ``names``: its outputs, then per kind (KINDS) a tuple of the
    inputs of that kind's ops."""
    probed = tvm.IRModule(module.functions, attrs=module.attrs)  # the same GlobalVars: kernels stay referenced
    for name in names:
        probed[name + PROBE_SUFFIX] = _probed(module[name], name + PROBE_SUFFIX)
    return probed


def _probed(func, name):
    plain = relax.transform.ToNonDataflow()(tvm.IRModule({name: func}))[name]
    bindings = [binding for block in plain.body.blocks for binding in block.bindings]
    probes = {kind: [] for kind in KINDS}
    for binding in bindings:
        if probed_kind(binding.value):
            probes[probed_kind(binding.value)].append(binding.value.args[0])
    result = plain.body.body
    fields = list(result.fields) if isinstance(result, relax.Tuple) else [relax.TupleGetItem(result, i) for i in range(len(result.ty.fields))]
    builder = relax.BlockBuilder()
    with builder.function(name, list(plain.params)):
        for binding in bindings:
            builder.emit_normalized(binding)
        groups = [relax.Tuple(probes[kind]) for kind in KINDS]
        builder.emit_func_output(builder.emit(relax.Tuple([*fields, *groups])))
    probed = copy_with_new_vars(builder.get()[name])  # a var may be defined in one function only
    return relax.transform.ConvertToDataflow(min_size=1)(tvm.IRModule({name: probed}))[name]


def probed_kind(value):
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return PROBED_OPS.get(value.op.name)
    return None


def probe_calls(trainer, x, y, skeleton=None, seed=None):
    """(gradients by name, {kind: [inputs as numpy]}) from one call of the build's probed gradient function,
    whose gradients must be the product's function's bit for bit (the same graph and kernels)."""
    args = [trainer._input(x), *trainer._params, *trainer._states, *trainer._seed(seed), trainer._labels(y)]
    if skeleton is None:
        result = trainer._vm["gradients" + PROBE_SUFFIX](*args)
    else:
        result = trainer._vm["gradients_skel" + PROBE_SUFFIX](*args, *trainer._skeleton(skeleton))
    grads = {n: g.numpy() for n, g in zip(trainer.param_names, result[1])}
    for name, value in trainer.gradients(x, y, skeleton, seed=seed).items():
        np.testing.assert_array_equal(grads[name], value, err_msg=name)
    groups = [result[len(result) - len(KINDS) + i] for i in range(len(KINDS))]
    return grads, {kind: [t.numpy() for t in group] for kind, group in zip(KINDS, groups)}


def replayed_gradients(module, probes, x, y, skeleton=None, **options):
    """(torch's gradients of ``module`` on the build's decisions ``probes``, its BuildDecisions); ``x`` is
    cast to the module's dtype."""
    dtype = next(module.parameters()).detach().numpy().dtype
    with BuildDecisions(probes, **options) as decisions:
        _, grads = torch_gradients(module, nn_conv_outputs, x.astype(dtype), y, skeleton)
    return grads, decisions


class BuildDecisions:
    """torch's ReLU, ReLU6, hardtanh and max_pool2d replaced, call by call, by versions that take the decisions
    of a float32 build's inputs ``probes`` (matched
    to torch's calls by kind, shape and value).  ``flipped``: how many decisions differed from the float64 inputs'."""

    def __init__(self, probes, match_tolerance=MATCH_TOLERANCE):
        self.probes = [(kind, value) for kind in KINDS for value in probes[kind]]
        self.match_tolerance = match_tolerance
        self.used = set()
        self.flipped = 0

    def __enter__(self):
        self._saved = torch.relu, torch.Tensor.relu, F.relu, F.hardtanh, F.max_pool2d, F.relu6
        torch.relu = torch.Tensor.relu = lambda z: self._relu(z)
        F.relu = lambda z, inplace=False: self._relu(z)
        F.hardtanh = lambda z, min_val=-1.0, max_val=1.0, inplace=False: self._clip(z, min_val, max_val)
        F.max_pool2d = self._max_pool2d
        F.relu6 = lambda z, inplace=False: self._clip(z, 0.0, 6.0)
        return self

    def __exit__(self, *exc):
        torch.relu, torch.Tensor.relu, F.relu, F.hardtanh, F.max_pool2d, F.relu6 = self._saved
        if exc[0] is None:
            assert len(self.used) == len(self.probes), f"torch made {len(self.used)} probed calls, the build {len(self.probes)}"

    def _next(self, kind, z):
        """The build's input of this op: of the unused probes of its kind and shape, the one nearest ``z``
        (the graph's order of independent branches need not be torch's), which must be within float32
        error of it."""
        candidates = [i for i, (of, value) in enumerate(self.probes)
                      if i not in self.used and of == kind and value.shape == tuple(z.shape)]
        assert candidates, f"torch's {kind} of shape {tuple(z.shape)} (call {len(self.used)}) matches no probe of the build"
        exact = z.detach().numpy()
        scale = max(float(np.abs(exact).max()), 1e-30)
        distance, index = min((float(np.abs(self.probes[i][1] - exact).max()) / scale, i) for i in candidates)
        assert distance < self.match_tolerance, f"torch's {kind} {tuple(z.shape)}: the nearest probe is {distance:.1e} off"
        self.used.add(index)
        return torch.from_numpy(self.probes[index][1])

    def _relu(self, z):
        passes = self._next("relu", z) > 0
        self.flipped += int((passes != (z.detach() > 0)).sum())
        return z * passes.to(z.dtype)

    def _clip(self, z, low, high):
        probe = self._next("clip", z)
        low, high = -math.inf if low is None else low, math.inf if high is None else high
        inside = (probe >= low) & (probe <= high)  # bounds included, as compiler/gradients/clip.py
        self.flipped += int((inside != ((z.detach() >= low) & (z.detach() <= high))).sum())
        return torch.where(inside, z, torch.where(probe < low, low, high).to(z.dtype))

    def _max_pool2d(self, z, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        probe = self._next("max_pool2d", z)
        stride = kernel_size if stride in (None, []) else stride
        _, index = self._saved[4](probe, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        _, exact = self._saved[4](z.detach(), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        self.flipped += int((index != exact).sum())
        pooled = z.flatten(2).gather(2, index.flatten(2)).view(index.shape)
        return (pooled, index) if return_indices else pooled


def scaled_errors(got, want):
    """{name: max |got - want| relative to the tensor's scale}, the scale as test_compiler_gradients takes it."""
    return _errors(got, want, _scales(want))


def probing(load_training_module):
    """``pipeline.load_training_module`` that also adds the probed gradient functions (to monkeypatch in)."""
    def load(*args, **kwargs):
        imported, training = load_training_module(*args, **kwargs)
        return imported, dataclasses.replace(training, module=with_decision_probes(training.module))
    return load
