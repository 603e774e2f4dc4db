"""Our BatchNorm backward (compiler/gradients/batch_norm.py) with the forward decomposition it pairs with
(batch_norm_stats.DecomposeTrainingBatchNorm) equals torch autograd, in isolation, float64.

loss = sum(batch_norm(x, gamma, beta) * dY), so the gradients in x, gamma and beta are the op's backward
applied to dY.  Training mode over 4-D maps down to 1x1 (n = N) and 2-D inputs (BatchNorm1d), inference
mode, and the affine-free form; all cases share one compiled module.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from fedskel.compiler import gradients  # noqa: F401  (registers the rule under test)
from fedskel.compiler.batch_norm_stats import DecomposeTrainingBatchNorm

ROUNDING = 1e-12
EPSILON = 1e-5

# (shape, training, affine)
CASES = [((2, 4, 5, 5), True, True), ((3, 6, 1, 1), True, True), ((1, 3, 2, 7), True, True), ((5, 4), True, True),
         ((2, 3, 4, 4), True, False), ((2, 4, 3, 3), False, True)]


def _loss(name, shape, training, affine):
    channels = (shape[1],)
    x, gamma, beta, mean, var = (relax.Var(n, relax.TensorType(s, "float64")) for n, s in
                                 (("x", shape), ("gamma", channels), ("beta", channels), ("mean", channels), ("var", channels)))
    dy = relax.Var("dy", relax.TensorType(shape, "float64"))
    bb = relax.BlockBuilder()
    with bb.function(name, [x, gamma, beta, mean, var, dy]):
        with bb.dataflow():
            out = bb.emit(relax.op.nn.batch_norm(x, gamma, beta, mean, var, 1, EPSILON, center=affine, scale=affine,
                                                 momentum=0.1, training=training))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(relax.TupleGetItem(out, 0), dy)))
        bb.emit_func_output(loss)
    return bb.get()[name]


@pytest.fixture(scope="module")
def bn_vm():
    module = tvm.IRModule()
    for i, case in enumerate(CASES):
        module[f"f{i}"] = _loss(f"f{i}", *case)
    for i, (_, _, affine) in enumerate(CASES):
        params = module[f"f{i}"].params
        module = relax.transform.Gradient(f"f{i}", require_grads=list(params[:3] if affine else params[:1]))(module)
    module = DecomposeTrainingBatchNorm()(module)
    return relax.VirtualMachine(tvm.compile(module, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{'x'.join(map(str, s))}-{'train' if t else 'eval'}{'' if a else '-no-affine'}" for s, t, a in CASES])
def test_batch_norm_gradient_equals_torch(bn_vm, index):
    shape, training, affine = CASES[index]
    rng = np.random.default_rng(index)
    x = 3 + 2 * rng.standard_normal(shape)  # off-centre: the deviation from the mean matters
    gamma, beta = 0.5 + rng.random(shape[1]), rng.standard_normal(shape[1])
    mean, var = rng.standard_normal(shape[1]), 0.5 + rng.random(shape[1])
    dy = rng.standard_normal(shape)
    leaves = [torch.tensor(v, requires_grad=True) for v in (x, gamma, beta)]
    y = F.batch_norm(leaves[0], torch.tensor(mean), torch.tensor(var), leaves[1] if affine else None,
                     leaves[2] if affine else None, training=training, eps=EPSILON)
    y.backward(torch.from_numpy(dy))
    wants = [leaf.grad.numpy() for leaf in (leaves if affine else leaves[:1])]
    loss, grads = bn_vm[f"f{index}_adjoint"](*(tvm.runtime.tensor(v) for v in (x, gamma, beta, mean, var, dy)))
    assert float(loss.numpy()) == pytest.approx(float((y.detach().numpy() * dy).sum()), rel=1e-10, abs=1e-10)
    assert len(grads) == len(wants)
    for name, grad, want in zip(("x", "gamma", "beta"), grads, wants):
        error = np.abs(grad.numpy() - want).max()
        assert error <= ROUNDING * max(np.abs(want).max(), 1.0), (name, error)
