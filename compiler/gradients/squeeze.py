"""The backward of ``relax.squeeze`` (ONNX Squeeze, e.g. ``x.squeeze(-1)`` after a global pool), which TVM
0.27 does not differentiate: dY reshaped back to the input's shape.
"""

from tvm import relax
from tvm.relax.op.base import register_gradient

from ..conv_gradient import static_shape


def _squeeze_grad(orig_var, orig_call, output_grad, ctx):
    return [relax.op.reshape(output_grad, static_shape(orig_call.args[0]))]


register_gradient("relax.squeeze", _squeeze_grad, level=20)
