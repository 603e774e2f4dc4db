"""The backward of ``relax.clip`` (ONNX Clip / ReLU6, and inside HardSigmoid and HardSwish).

TVM 0.27 registers none.  The gradient passes where ``min <= x <= max``, bounds included, as for
``torch.clamp`` (torch's ``hardtanh``, behind ``nn.ReLU6``, excludes them; the two differ only on inputs
exactly at a bound).
"""

import math

from tvm import relax
from tvm.relax.op.base import register_gradient
from tvm.relax.op.grad import no_grad

from ._values import number


def _clip_grad(orig_var, orig_call, output_grad, ctx):
    data, low, high = orig_call.args
    dtype = data.ty.dtype
    inside = None
    for bound, compare in ((number(low), relax.op.greater_equal), (number(high), relax.op.less_equal)):
        if math.isinf(bound):
            continue
        test = compare(data, relax.const(bound, dtype))
        inside = test if inside is None else relax.op.logical_and(inside, test)
    grad = output_grad if inside is None else relax.op.where(inside, output_grad, relax.const(0, dtype))
    return [grad, no_grad(low), no_grad(high)]


register_gradient("relax.clip", _clip_grad, level=20)
