"""BatchNorm in training as torch computes it, decomposed so its backward costs few passes over memory.

- Statistics: the mean, then the mean of squared deviations from it (two passes, each one fused kernel
  once WidenReductionAccumulators gives both float64 accumulators); no float64 copy of the input is stored.
- Running variance: torch's unbiased batch variance, a factor n / (n - 1) on the batch term (n = N*H*W per
  channel: 4/3 at n = 4), where Relax's own lowering keeps ONNX's biased one and a model trained here and
  taken back to torch would drift.  n = 1, where torch refuses to train, keeps the biased value.
- The gradient (gradients/batch_norm.py) builds its statistics with ``batch_statistics`` too, so after
  EliminateCommonSubexpr the forward and the backward share them.
ONNX keeps epsilon and momentum as float32 (1e-5 is 9.99999975e-06, 0.1 is 0.10000000149): they are read as
the values they stand for (onnx_floats.py).
"""

import math

import tvm
from tvm import relax

from .errors import CompileError
from .onnx_floats import intended_value

CONVENTION = "unbiased"  # what the manifest records for running_var


def is_batch_norm(call):
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.batch_norm"


def channel_geometry(data, axis):
    """(rank, channel axis, reduced axes, values per channel) of a batch_norm input with a static shape."""
    if data.ty.shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in data.ty.shape):
        raise CompileError("a BatchNormalization input has no static shape (a shape computed from the data?)")
    shape = [int(d) for d in data.ty.shape]
    axis = int(axis) % len(shape)
    axes = [a for a in range(len(shape)) if a != axis]
    return len(shape), axis, axes, math.prod(shape[a] for a in axes)


def per_channel(vector, rank, axis):
    """A [C] vector reshaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = int(vector.ty.shape[0])
    return relax.op.reshape(vector, shape)


def batch_statistics(emit, data, axis):
    """(mean, deviation from it, biased variance), as emitted bindings.

    Sums scaled by 1/n rather than ``mean``: TVM lowers ``mean`` to a kernel that operator fusion does not
    fuse its producers into, so the float64 widening of its input would be stored as a tensor.
    """
    rank, axis, axes, count = channel_geometry(data, axis)
    per_value = relax.const(1.0 / count, data.ty.dtype)
    mean = emit(relax.op.multiply(relax.op.sum(data, axes), per_value))
    deviation = emit(relax.op.subtract(data, per_channel(mean, rank, axis)))
    variance = emit(relax.op.multiply(relax.op.sum(relax.op.multiply(deviation, deviation), axes), per_value))
    return mean, deviation, variance


def inverse_std(emit, variance, epsilon):
    return emit(relax.op.rsqrt(relax.op.add(variance, relax.const(float(epsilon), variance.ty.dtype))))


@relax.expr_functor.mutator
class _DecomposeTrainingBatchNorm(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (is_batch_norm(call) and call.attrs.training):
            return call
        data, gamma, beta, running_mean, running_var = call.args
        a = call.attrs
        rank, axis, _, count = channel_geometry(data, a.axis)
        emit, dtype = self.builder_.emit, data.ty.dtype
        mean, deviation, variance = batch_statistics(emit, data, axis)
        scale = inverse_std(emit, variance, a.epsilon)
        if a.scale:
            scale = emit(relax.op.multiply(gamma, scale))
        out = emit(relax.op.multiply(deviation, per_channel(scale, rank, axis)))
        if a.center:
            out = emit(relax.op.add(out, per_channel(beta, rank, axis)))
        momentum = float(a.momentum)
        unbiased = count / (count - 1) if count > 1 else 1.0
        keep = relax.const(1.0 - momentum, dtype)
        new_mean = relax.op.add(relax.op.multiply(running_mean, keep), relax.op.multiply(mean, relax.const(momentum, dtype)))
        new_var = relax.op.add(relax.op.multiply(running_var, keep),
                               relax.op.multiply(variance, relax.const(momentum * unbiased, dtype)))
        return relax.Tuple([out, new_mean, new_var])


@relax.transform.function_pass(opt_level=0, name="DecomposeTrainingBatchNorm")
class DecomposeTrainingBatchNorm:
    """Every training batch_norm of every Relax function as the ops above (inference ones are left to TVM)."""

    def transform_function(self, func, mod, ctx):
        return _DecomposeTrainingBatchNorm().visit_expr(func)


@relax.expr_functor.mutator
class _ExactAttributes(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not is_batch_norm(call):
            return call
        a = call.attrs
        epsilon, momentum = intended_value(a.epsilon), intended_value(a.momentum)
        return relax.op.nn.batch_norm(*call.args, a.axis, epsilon, a.center, a.scale, momentum, training=a.training)


def exact_attributes(func):
    """``func`` with every batch_norm's epsilon and momentum the values their float32 ONNX attributes
    stand for."""
    return _ExactAttributes().visit_expr(func)
