"""BatchNorm as torch computes it: the unbiased batch variance in running_var, epsilon as written.

Relax's ``batch_norm`` (training) updates ``running_var`` with the biased variance of the batch, ONNX's
convention; torch uses the unbiased one, a factor n / (n - 1) on the batch term (n = N*H*W per channel:
22% at n = 4).  A model trained here and taken back to torch would drift.  Each training batch_norm's
new running variance gets the missing ``momentum * var / (n - 1)``; n = 1, where torch refuses to
train, keeps Relax's value.  ONNX keeps epsilon and momentum as float32 (1e-5 is 9.99999975e-06, 0.1 is
0.10000000149): they are read as the values they stand for (onnx_floats.py).
"""

import tvm
from tvm import relax

from .errors import CompileError
from .onnx_floats import intended_value

CONVENTION = "unbiased"  # what the manifest records for running_var


@relax.expr_functor.mutator
class UnbiasedRunningVariance(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.batch_norm" and call.attrs.training):
            return call
        data = call.args[0]
        if data.ty.shape is None:
            raise CompileError("a BatchNormalization input has no static shape (a shape computed from the data?)")
        shape = [int(d) for d in data.ty.shape]
        axis = int(call.attrs.axis) % len(shape)
        axes = [a for a in range(len(shape)) if a != axis]
        count = 1
        for a in axes:
            count *= shape[a]
        if count < 2:
            return call
        bound = self.builder_.emit(call)
        dtype = data.ty.dtype
        extra = relax.op.multiply(relax.op.variance(data, axes), relax.const(float(call.attrs.momentum) / (count - 1), dtype))
        fields = [relax.TupleGetItem(bound, i) for i in range(3)]
        return relax.Tuple([fields[0], fields[1], relax.op.add(fields[2], extra)])


def unbiased_running_variance(func):
    """``func`` with every training batch_norm's running variance updated as torch updates it."""
    return UnbiasedRunningVariance().visit_expr(func)


@relax.expr_functor.mutator
class _ExactAttributes(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.batch_norm"):
            return call
        a = call.attrs
        epsilon, momentum = intended_value(a.epsilon), intended_value(a.momentum)
        return relax.op.nn.batch_norm(*call.args, a.axis, epsilon, a.center, a.scale, momentum, training=a.training)


def exact_attributes(func):
    """``func`` with every batch_norm's epsilon and momentum the values their float32 ONNX attributes
    stand for."""
    return _ExactAttributes().visit_expr(func)
