"""The backward of ``relax.concat`` for any number of inputs, one included.

TVM 0.27's rule splits dY at no index when there is a single input, which the Gradient pass rejects
("Expected nested to match tuple"; densenet's first dense layer concatenates one tensor).
"""

from tvm import relax
from tvm.relax.op.base import register_gradient


def _concat_grad(orig_var, orig_call, output_grad, ctx):
    axis = int(orig_call.attrs.axis)
    fields = orig_call.args[0].ty.fields
    if len(fields) == 1:
        return [relax.Tuple([output_grad])]
    indices, offset = [], 0
    for field in fields[:-1]:
        offset += int(field.shape[axis])
        indices.append(offset)
    return [relax.op.split(output_grad, indices, axis)]


register_gradient("relax.concat", _concat_grad, level=20)
