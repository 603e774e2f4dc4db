"""The backward of ``relax.nn.batch_norm``, so BatchNorm need not be decomposed before differentiation.

Differentiating the decomposed ops (mean, variance, subtract, divide, ...) one by one gave resnet18 a dozen
kernels per BatchNorm, five of them passes over the activation.  The closed form needs two sums and one
elementwise pass:

    dx = gamma * invstd * (dy - mean(dy) - xmu * invstd^2 * mean(dy * xmu)),  dgamma = sum(dy * xmu) * invstd,
    dbeta = sum(dy)

The statistics come from ``batch_statistics``, the same bindings the forward decomposition emits, so the
two share them after common-subexpression elimination.  In inference mode the running statistics are
constants and dx is dy scaled per channel.  The running statistics get no gradient.
"""

from tvm import relax
from tvm.relax.op.base import register_gradient
from tvm.relax.op.grad import no_grad

from ..batch_norm_stats import batch_statistics, channel_geometry, inverse_std, per_channel


def _batch_norm_grad(orig_var, orig_call, output_grad, ctx):
    data, gamma, beta, running_mean, running_var = orig_call.args
    a = orig_call.attrs
    rank, axis, axes, count = channel_geometry(data, a.axis)
    emit, dtype = ctx.emit, data.ty.dtype
    dy = emit(relax.TupleGetItem(output_grad, 0))
    if a.training:
        _, deviation, variance = batch_statistics(emit, data, axis)
    else:
        deviation = emit(relax.op.subtract(data, per_channel(running_mean, rank, axis)))
        variance = running_var
    invstd = inverse_std(emit, variance, a.epsilon)
    scale = emit(relax.op.multiply(gamma, invstd)) if a.scale else invstd
    sum_dy = emit(relax.op.sum(dy, axes))
    sum_dy_dev = emit(relax.op.sum(relax.op.multiply(dy, deviation), axes))
    dx = relax.op.multiply(dy, per_channel(scale, rank, axis))
    if a.training:
        per_value = relax.const(-1.0 / count, dtype)
        dev_coef = emit(relax.op.multiply(relax.op.multiply(scale, relax.op.multiply(invstd, invstd)),
                                          relax.op.multiply(sum_dy_dev, per_value)))
        shift = emit(relax.op.multiply(scale, relax.op.multiply(sum_dy, per_value)))
        dx = relax.op.add(relax.op.add(dx, relax.op.multiply(deviation, per_channel(dev_coef, rank, axis))),
                          per_channel(shift, rank, axis))
    d_gamma = relax.op.multiply(sum_dy_dev, invstd) if a.scale else relax.op.zeros_like(gamma)
    d_beta = sum_dy if a.center else relax.op.zeros_like(beta)
    return [dx, d_gamma, d_beta, no_grad(running_mean), no_grad(running_var)]


register_gradient("relax.nn.batch_norm", _batch_norm_grad, level=20)
