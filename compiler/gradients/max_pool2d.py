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


def _pairs(values):
    return tuple(int(v) for v in values)


def _window_geometry(attrs, in_hw, out_hw):
    """Per axis: (kernel, stride, dilation, pad_before, pad_after), pad_after covering ceil_mode windows."""
    kernel, strides, dilation = _pairs(attrs.pool_size), _pairs(attrs.strides), _pairs(attrs.dilation)
    padding = _pairs(attrs.padding)
    axes = []
    for axis in range(2):
        k, s, d = kernel[axis], strides[axis], dilation[axis]
        before, after = padding[axis], padding[axis + 2]
        span = (out_hw[axis] - 1) * s + d * (k - 1) + 1
        axes.append((k, s, d, before, max(after, span - in_hw[axis] - before)))
    return axes


def _axis_taps(k, s, d, before, size, out_size):
    """For one axis: position[tap, o] in the unpadded input of window o's tap, or -1 inside the padding."""
    position = np.arange(k)[:, None] * d + np.arange(out_size)[None, :] * s - before
    return np.where((position >= 0) & (position < size), position, -1)


def _gather_table(rows, cols, in_hw, out_hw):
    """table[input position, j]: flat index into the stacked per-tap gradients; the last index is a zero."""
    (kh, oh), (kw, ow) = (rows.shape[0], out_hw[0]), (cols.shape[0], out_hw[1])
    src = np.arange(kh * kw * oh * ow).reshape(kh, kw, oh, ow)
    row = np.broadcast_to(rows[:, None, :, None], src.shape)
    col = np.broadcast_to(cols[None, :, None, :], src.shape)
    inside = (row >= 0) & (col >= 0)
    target = (row * in_hw[1] + col)[inside]
    source = src[inside]
    order = np.argsort(target, kind="stable")
    target, source = target[order], source[order]
    counts = np.bincount(target, minlength=in_hw[0] * in_hw[1])
    width = max(1, int(counts.max()))
    table = np.full((in_hw[0] * in_hw[1], width), kh * kw * oh * ow, dtype="int64")
    slot = np.arange(len(target)) - np.repeat(np.cumsum(counts) - counts, counts)
    table[target, slot] = source
    return table


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
    geometry = _window_geometry(attrs, (height, width), (out_h, out_w))
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
    per_tap = relax.op.reshape(per_tap, (batch, channels, kh * kw * out_h * out_w))
    per_tap = relax.op.concat([per_tap, relax.op.zeros((batch, channels, 1), dtype)], axis=2)
    rows = _axis_taps(kh, sh, dh, top, height, out_h)
    cols = _axis_taps(kw, sw, dw, left, width, out_w)
    table = _gather_table(rows, cols, (height, width), (out_h, out_w))
    gathered = relax.op.take(per_tap, relax.const(table.reshape(-1)), axis=2)
    return [relax.op.sum(relax.op.reshape(gathered, (batch, channels, height, width, table.shape[1])), axis=[4])]


# Importing this module installs the rule; level 20 outranks TVM's own (level 10).
register_gradient("relax.nn.max_pool2d", _max_pool2d_grad, level=20)
