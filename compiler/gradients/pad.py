"""The backward of ``relax.nn.pad`` in constant mode (ONNX Pad, torch's ``F.pad``): crop dY back.

TVM 0.27 registers none.  Other modes (reflect, edge) fold several outputs onto one input and are
refused by the ONNX import.
"""

from tvm import relax
from tvm.relax.op.base import register_gradient

from ..conv_gradient import static_shape


def _pad_grad(orig_var, orig_call, output_grad, ctx):
    attrs = orig_call.attrs
    if attrs.pad_mode != "constant":
        raise ValueError(f"pad gradient supports constant mode only, got {attrs.pad_mode}")
    shape = static_shape(orig_call.args[0])
    before = [int(v) for v in attrs.pad_width[0::2]]
    if min(int(v) for v in attrs.pad_width) < 0:
        raise ValueError("pad gradient needs non-negative pads")
    axes = list(range(len(shape)))
    return [relax.op.strided_slice(output_grad, axes, before, [b + n for b, n in zip(before, shape)])]


register_gradient("relax.nn.pad", _pad_grad, level=20)
