"""The backward of ``relax.nn.max_pool2d``, replacing TVM 0.27's.

TVM's ``max_pool2d_backward`` kernel is wrong for overlapping windows on small maps (k3 s1 p1 on 2x2, k4 s1
p0 on 6x6) and reads uninitialised memory on some shapes (NaN).  This rule is written with ordinary Relax
ops whose semantics are simple: the K*K strided views (taps) of the input padded with -inf, the argmax
over the taps (ties go to the first tap of the window in row-major order, as torch does), and a gather
with a constant table that sums, for every input element, the output gradients of the windows whose
maximum it is.  (A padded tap can win only where every real element of its window is -inf.)

Windows that tile the map (stride = kernel, no padding or dilation: LeNet's and most CNNs' ``MaxPool2d(2)``)
take a shorter road with the same semantics: the map viewed as (windows, taps), the argmax over the taps,
and the gradient written back through the same view, two passes with no gather table.
"""

import numpy as np
from tvm import relax
from tvm.relax.op.base import register_gradient

from ..conv_gradient import static_shape
from ._windows import sum_over_windows, window_geometry


def _tiles_map(geometry, in_hw, out_hw):
    """Whether every window is whole, disjoint from the others and inside the map (rows and columns past the
    last window get no gradient)."""
    return all(k == s and d == 1 and before == 0 and out * k <= size
               for (k, s, d, before, _), size, out in zip(geometry, in_hw, out_hw))


def _tiled_max_pool2d_grad(data, output_grad, kh, kw, out_hw):
    """The gradient of non-overlapping windows: x[:, :, :oh*kh, :ow*kw] seen as (N, C, oh, ow, kh*kw)."""
    batch, channels, height, width = static_shape(data)
    (out_h, out_w), dtype = out_hw, data.ty.dtype
    covered_h, covered_w = out_h * kh, out_w * kw
    cropped = (covered_h, covered_w) != (height, width)
    covered = data
    if cropped:
        covered = relax.op.strided_slice(data, axes=[2, 3], begin=[0, 0], end=[covered_h, covered_w])
    windows = relax.op.permute_dims(relax.op.reshape(covered, (batch, channels, out_h, kh, out_w, kw)), [0, 1, 2, 4, 3, 5])
    winner = relax.op.argmax(relax.op.reshape(windows, (batch, channels, out_h, out_w, kh * kw)), axis=4, keepdims=True)
    tap_index = relax.const(np.arange(kh * kw, dtype="int64"))
    per_tap = relax.op.where(relax.op.equal(winner, tap_index), relax.op.expand_dims(output_grad, 4), relax.const(0, dtype))
    per_tap = relax.op.permute_dims(relax.op.reshape(per_tap, (batch, channels, out_h, out_w, kh, kw)), [0, 1, 2, 4, 3, 5])
    grad = relax.op.reshape(per_tap, (batch, channels, covered_h, covered_w))
    if cropped:
        grad = relax.op.nn.pad(grad, [0, 0, 0, 0, 0, height - covered_h, 0, width - covered_w])
    return grad


def _max_pool2d_grad(orig_var, orig_call, output_grad, ctx):
    attrs = orig_call.attrs
    if attrs.layout != "NCHW" or (attrs.out_layout or "NCHW") != "NCHW":
        raise ValueError(f"max_pool2d gradient supports NCHW only, got {attrs.layout}")
    data = orig_call.args[0]
    batch, channels, height, width = static_shape(data)
    out_h, out_w = static_shape(orig_var)[2:]
    dtype = data.ty.dtype
    geometry = window_geometry(attrs, (height, width), (out_h, out_w))
    (kh, sh, dh, top, bottom), (kw, sw, dw, left, right) = geometry
    if _tiles_map(geometry, (height, width), (out_h, out_w)):
        return [_tiled_max_pool2d_grad(data, output_grad, kh, kw, (out_h, out_w))]
    padded = relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float("-inf"))
    taps = [
        relax.op.strided_slice(padded, axes=[2, 3], begin=[i * dh, j * dw],
                               end=[i * dh + (out_h - 1) * sh + 1, j * dw + (out_w - 1) * sw + 1], strides=[sh, sw])
        for i in range(kh)
        for j in range(kw)
    ]
    # argmax returns the first maximal tap: torch's choice among ties
    winner = relax.op.argmax(relax.op.stack(taps, axis=2), axis=2, keepdims=True)
    tap_index = relax.const(np.arange(kh * kw, dtype="int64").reshape(1, 1, -1, 1, 1))
    per_tap = relax.op.where(relax.op.equal(winner, tap_index), relax.op.expand_dims(output_grad, 2), relax.const(0, dtype))
    return [sum_over_windows(per_tap, (batch, channels, height, width), dtype, geometry, (out_h, out_w))]


# Importing this module installs the rule; level 20 outranks TVM's own (level 10).
register_gradient("relax.nn.max_pool2d", _max_pool2d_grad, level=20)
