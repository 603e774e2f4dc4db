"""The backward of ``relax.nn.relu`` as torch defines it: no gradient through an input of exactly 0.

TVM 0.27's rule passes the gradient where ``x >= 0``; torch's (``threshold_backward`` on the output) where
the output is not ``<= 0``: an input of exactly 0 gets none, a NaN passes its gradient on (as our lowered
ReLU passes the NaN itself, targets/legalize.py).  Exact zeros are rare in float64 but not in float32:
densenet121 (3x64x64, batch 8) has one in each of four ReLUs of its first dense block, which moved those
layers' gradients by up to 2% of their scale from torch's.
"""

from tvm import relax
from tvm.relax.op.base import register_gradient


def _relu_grad(orig_var, orig_call, output_grad, ctx):
    data = orig_call.args[0]
    zero = relax.const(0, data.ty.dtype)
    return [relax.op.where(relax.op.less_equal(data, zero), zero, output_grad)]


register_gradient("relax.nn.relu", _relu_grad, level=20)
