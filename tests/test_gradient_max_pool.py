"""The max_pool2d gradient equals torch autograd exactly, ties included, on every window geometry.

TVM 0.27's own rule is wrong on overlapping windows of small maps and can return NaN; ours replaces it
(compiler/gradients/max_pool2d.py).  Inputs are small integers, so most windows hold ties and the rule
must pick torch's element (the first maximum in row-major order); output gradients are integers too, so
the sums are exact and the comparison is equality, not a tolerance.  Many configurations share one Relax
module so the sweep costs one compile.
"""

import itertools

import numpy as np
import onnx
import pytest
import torch
import tvm
from tvm import relax

import fedskel.compiler.gradients  # noqa: F401  (registers the rule under test)
from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.zoo import export_onnx
from fedskel.runtime import load

from onnx_models import as_float64
from test_compiler_gradients import TorchReference, check_against_torch
from torch_oracle import nn_conv_outputs

# kernel, stride, padding, dilation, ceil_mode: torch allows padding up to half the kernel
GEOMETRIES = [
    g for g in itertools.product(range(1, 5), range(1, 4), range(3), (1, 2), (False, True)) if g[2] <= g[0] // 2
]
MAP_SIZES = range(1, 17)
# Shapes TVM 0.27's max_pool2d_backward got wrong (issue 13)
REGRESSIONS = [((3, 1, 1, 1, False), (2, 2)), ((4, 1, 0, 1, False), (6, 6)), ((3, 2, 1, 1, True), (7, 5))]
# Windows that tile the map take the rule's shorter road: exact tilings, rows/columns left over, a
# rectangular window; and the ceil_mode window past the edge that must not take it
TILINGS = [((2, 2, 0, 1, False), (8, 8)), ((2, 2, 0, 1, False), (7, 9)), ((3, 3, 0, 1, False), (7, 5)),
           (((2, 3), (2, 3), 0, 1, False), (8, 10)), ((1, 1, 0, 1, False), (3, 3)), ((2, 2, 0, 1, True), (7, 7))]


def torch_output_shape(geometry, hw):
    """torch's pooled (H, W), or None where torch refuses the geometry on this map or some window lies
    wholly in the padding (its output is -inf, and torch sends its gradient to an element outside it)."""
    kernel, stride, padding, dilation, ceil_mode = geometry
    try:
        out = torch.nn.functional.max_pool2d(torch.zeros(1, 1, *hw), kernel, stride, padding, dilation, ceil_mode)
    except RuntimeError:
        return None
    return None if torch.isinf(out).any() else tuple(out.shape[2:])


def _loss_function(name, shape, out_shape, geometry):
    """loss(x, dy) = sum(max_pool2d(x) * dy): its gradient in x is max_pool2d's backward applied to dy."""
    x = relax.Var("x", relax.TensorType(shape, "float64"))
    dy = relax.Var("dy", relax.TensorType(shape[:2] + out_shape, "float64"))
    bb = relax.BlockBuilder()
    with bb.function(name, [x, dy]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.max_pool2d(x, *geometry))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(y, dy)))
        bb.emit_func_output(loss)
    return bb.get()[name]


def compile_sweep(cases, batch=2, channels=2):
    """One VM holding ``f{i}_adjoint`` for every (geometry, (H, W)) case."""
    module = tvm.IRModule()
    for i, (geometry, hw) in enumerate(cases):
        module[f"f{i}"] = _loss_function(f"f{i}", (batch, channels, *hw), torch_output_shape(geometry, hw), geometry)
    for i in range(len(cases)):
        module = relax.transform.Gradient(f"f{i}", require_grads=[module[f"f{i}"].params[0]])(module)
    # opt-level 0: the arithmetic is exact, so LLVM's optimisations cannot change a result, and the sweep
    # compiles several times faster
    executable = tvm.compile(module, target=tvm.target.Target({"kind": "llvm", "opt-level": 0}))
    return relax.VirtualMachine(executable, tvm.cpu())


def sweep_mismatches(cases, seed=0, batch=2, channels=2):
    """The cases whose loss or input gradient is not exactly torch's (or holds a NaN)."""
    vm = compile_sweep(cases, batch, channels)
    rng = np.random.default_rng(seed)
    wrong = []
    for i, (geometry, hw) in enumerate(cases):
        x = rng.integers(0, 3, (batch, channels, *hw)).astype(np.float64)
        x_torch = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.max_pool2d(x_torch, *geometry)
        dy = rng.integers(-3, 4, tuple(y.shape)).astype(np.float64)
        want_loss = float((y * torch.from_numpy(dy)).sum().detach())
        y.backward(torch.from_numpy(dy))
        loss, (grad,) = vm[f"f{i}_adjoint"](tvm.runtime.tensor(x), tvm.runtime.tensor(dy))
        grad = grad.numpy()
        if np.isnan(grad).any() or not np.array_equal(grad, x_torch.grad.numpy()) or float(loss.numpy()) != want_loss:
            wrong.append((geometry, hw))
    return wrong


def valid_cases(geometries, sizes):
    return [(g, hw) for g in geometries for hw in sizes if torch_output_shape(g, hw) is not None]


def test_max_pool_gradient_sample_equals_torch():
    """The shapes TVM got wrong, the tilings, and a random quarter of the geometries on maps of random (H, W) in 1..16
    (a configuration costs about 0.3 s to compile; the slow step runs them all)."""
    rng = np.random.default_rng(13)
    cases = REGRESSIONS + TILINGS
    for index in rng.choice(len(GEOMETRIES), len(GEOMETRIES) // 4, replace=False):
        geometry = GEOMETRIES[index]
        while True:
            hw = tuple(int(v) for v in rng.integers(1, 17, 2))
            if torch_output_shape(geometry, hw) is not None:
                break
        cases.append((geometry, hw))
    assert sweep_mismatches(cases) == []


@pytest.mark.slow
def test_max_pool_gradient_full_sweep_equals_torch():
    """All geometries on every square map from 1x1 to 16x16 that torch accepts."""
    cases = valid_cases(GEOMETRIES, [(s, s) for s in MAP_SIZES])
    wrong = [case for start in range(0, len(cases), 100) for case in sweep_mismatches(cases[start : start + 100])]
    assert wrong == [], f"{len(wrong)} of {len(cases)} configurations differ from torch: {wrong[:5]}"


def test_onnx_max_pool_with_ceil_mode_and_dilation(tmp_path):
    """What torch exports for MaxPool (ceil_mode, dilations, pads) compiles; gradients equal torch's."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
        torch.nn.Conv2d(4, 6, 3), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Flatten(), torch.nn.Linear(6 * 2 * 2, 10),
    )
    model = onnx.load_from_string(export_onnx(module, (3, 13, 13), 4))
    assert {a.name for n in model.graph.node if n.op_type == "MaxPool" for a in n.attribute} >= {"ceil_mode", "dilations"}
    path = tmp_path / "pools.onnx"
    onnx.save(as_float64(model), str(path))
    compile_model(str(path), tmp_path / "pools.fsk", ratio=0.5)
    check_against_torch(load(tmp_path / "pools.fsk"), TorchReference(module.double().train(), nn_conv_outputs))
