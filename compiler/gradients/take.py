"""The backward of ``relax.take`` (ONNX Gather on activations, e.g. ``x[:, 0]``) for indices of any rank.

TVM 0.27's rule hands the indices to ``take_backward``, whose kernel accepts only 1-d indices: a scalar
index (``x[:, 0]``) or a 2-d one fails the build with a bare assertion.  Here dY and the indices are
flattened to that form first (the index axis becomes one axis of ``indices.size``); repeated indices still
add up, as in torch.
"""

import math

from tvm import relax
from tvm.relax.op.base import register_gradient
from tvm.relax.op.grad import no_grad, take_backward

from ..conv_gradient import static_shape


def _take_grad(orig_var, orig_call, output_grad, ctx):
    data, indices = orig_call.args
    axis = int(orig_call.attrs.axis)
    shape, index_shape = static_shape(data), static_shape(indices)
    if len(index_shape) != 1:
        count = math.prod(index_shape)
        output_grad = relax.op.reshape(output_grad, [*shape[:axis], count, *shape[axis + 1:]])
        indices = relax.op.reshape(indices, [count])
    return [take_backward(output_grad, data, indices, axis), no_grad(orig_call.args[1])]


register_gradient("relax.take", _take_grad, level=20)
