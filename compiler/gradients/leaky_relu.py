"""The backward of ``relax.nn.leakyrelu`` (ONNX LeakyRelu), which TVM 0.27 does not differentiate.

As torch's ``leaky_relu_backward``: the gradient where ``x > 0``, the gradient times the slope elsewhere
(an input of exactly 0 takes the slope; so does a NaN).
"""

from tvm import relax
from tvm.relax.op.base import register_gradient


def _leaky_relu_grad(orig_var, orig_call, output_grad, ctx):
    data = orig_call.args[0]
    dtype = data.ty.dtype
    sloped = relax.op.multiply(output_grad, relax.const(float(orig_call.attrs.alpha), dtype))
    return [relax.op.where(relax.op.greater(data, relax.const(0, dtype)), output_grad, sloped)]


register_gradient("relax.nn.leakyrelu", _leaky_relu_grad, level=20)
