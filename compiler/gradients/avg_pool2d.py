"""The backward of ``relax.nn.avg_pool2d``, replacing TVM 0.27's.

TVM's is wrong with ``ceil_mode`` and ``count_include_pad`` (5 of 120 configurations of kernel 2-3, stride 1-2,
padding 0-1 on 2x2 to 6x6 maps, off by up to 1.2 where its forward is exact): a window that runs past the
padded map is divided by a size its backward does not use.  Here each window's gradient is divided by torch's
divisor (the window clipped to the padded map, and to the map itself unless ``count_include_pad``) and sent
to the input elements it reads, through the gather that the max-pool rule uses.
"""

import numpy as np
from tvm import relax
from tvm.relax.op.base import register_gradient

from ..conv_gradient import static_shape
from ._windows import pairs, sum_over_windows, window_geometry


def _axis_divisor(k, s, before, after, size, out_size, count_include_pad):
    """Per window along one axis: how many positions torch's average divides by."""
    start = np.arange(out_size) * s - before
    end = np.minimum(start + k, size + after)
    if not count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return end - start


def _avg_pool2d_grad(orig_var, orig_call, output_grad, ctx):
    attrs = orig_call.attrs
    if attrs.layout != "NCHW" or (attrs.out_layout or "NCHW") != "NCHW":
        raise ValueError(f"avg_pool2d gradient supports NCHW only, got {attrs.layout}")
    if any(d != 1 for d in pairs(attrs.dilation)):
        raise ValueError(f"avg_pool2d gradient: dilation {pairs(attrs.dilation)} is not supported")
    data = orig_call.args[0]
    shape, dtype = static_shape(data), data.ty.dtype
    out_hw = tuple(static_shape(orig_var)[2:])
    geometry = window_geometry(attrs, tuple(shape[2:]), out_hw)
    padding = pairs(attrs.padding)  # top, left, bottom, right as given (window_geometry widens the far side)
    divisors = [_axis_divisor(k, s, before, padding[axis + 2], shape[2 + axis], out_hw[axis], bool(attrs.count_include_pad))
                for axis, (k, s, _, before, _) in enumerate(geometry)]
    share = relax.op.multiply(output_grad, relax.const(1.0 / np.outer(*divisors), dtype))
    (kh, *_), (kw, *_) = geometry
    per_tap = relax.op.broadcast_to(relax.op.expand_dims(share, 2), (*shape[:2], kh * kw, *out_hw))
    return [sum_over_windows(per_tap, shape, dtype, geometry, out_hw)]


# Importing this module installs the rule; level 20 outranks TVM's own (level 10).
register_gradient("relax.nn.avg_pool2d", _avg_pool2d_grad, level=20)
