"""Average pooling's gradient (compiler/gradients/avg_pool2d.py) equals torch autograd over a sweep: kernel
2-3, stride 1-2, padding 0-1, ceil_mode, count_include_pad, maps 2x2 to 6x6 (TVM 0.27's own rule is wrong on
5 of these 120, all with ceil_mode and count_include_pad).  Each case is what torch exports for
``F.avg_pool2d``, imported as the pipeline imports it and differentiated in isolation, all in one module."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from fedskel.compiler import gradients  # noqa: F401  (registers the rule under test)

from test_gradient_rules import ROUNDING, _loss_function, _torch_onnx

CASES = [(k, s, p, ceil, include, hw)
         for k, s, p, ceil, include, hw in itertools.product([2, 3], [1, 2], [0, 1], [False, True], [True, False], [2, 3, 5, 6])
         if p <= k // 2 and hw + 2 * p >= k]


def _pool(case):
    k, s, p, ceil, include, _ = case
    return lambda x: F.avg_pool2d(x, k, s, p, ceil, include)


@pytest.fixture(scope="module")
def pool_vm():
    module = tvm.IRModule()
    for i, case in enumerate(CASES):
        module[f"f{i}"] = _loss_function(f"f{i}", _torch_onnx(_pool(case), (2, 3, case[-1], case[-1])))
        module = relax.transform.Gradient(f"f{i}", require_grads=[module[f"f{i}"].params[0]])(module)
    return relax.VirtualMachine(tvm.compile(module, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())


def test_sweep_covers_the_cases_tvm_gets_wrong():
    assert len(CASES) == 120
    assert sum(1 for _, _, _, ceil, include, _ in CASES if ceil and include) == 30


@pytest.mark.parametrize("index", range(len(CASES)), ids=["k{}s{}p{}{}{}-{}".format(
    k, s, p, "-ceil" if ceil else "", "-incpad" if include else "", hw) for k, s, p, ceil, include, hw in CASES])
def test_avg_pool_gradient_equals_torch(pool_vm, index):
    case = CASES[index]
    rng = np.random.default_rng(index)
    x = torch.tensor(rng.standard_normal((2, 3, case[-1], case[-1])), requires_grad=True)
    y = _pool(case)(x)
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    loss, (grad,) = pool_vm[f"f{index}_adjoint"](tvm.runtime.tensor(x.detach().numpy()), tvm.runtime.tensor(dy))
    assert float(loss.numpy()) == pytest.approx(float((y.detach().numpy() * dy).sum()), rel=ROUNDING, abs=ROUNDING)
    np.testing.assert_allclose(grad.numpy(), x.grad.numpy(), rtol=ROUNDING, atol=ROUNDING)
