"""Window geometry shared by the pooling gradients: where each tap of each window reads, and the gather
that sums, for every input element, what the windows reading it send back."""

import numpy as np
from tvm import relax


def pairs(values):
    return tuple(int(v) for v in values)


def window_geometry(attrs, in_hw, out_hw):
    """Per axis: (kernel, stride, dilation, pad_before, pad_after), pad_after covering ceil_mode windows."""
    kernel, strides, dilation = pairs(attrs.pool_size), pairs(attrs.strides), pairs(attrs.dilation)
    padding = pairs(attrs.padding)
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


def sum_over_windows(per_tap, data_shape, dtype, geometry, out_hw):
    """dX (of shape ``data_shape``) from ``per_tap`` (N, C, K*K, OH, OW), each tap's share of its window's
    gradient: for every input element, the sum of the shares of the taps that read it (padding dropped)."""
    (kh, sh, dh, top, _), (kw, sw, dw, left, _) = geometry
    batch, channels, *in_hw = data_shape
    flat = relax.op.reshape(per_tap, (batch, channels, kh * kw * out_hw[0] * out_hw[1]))
    flat = relax.op.concat([flat, relax.op.zeros((batch, channels, 1), dtype)], axis=2)
    rows = _axis_taps(kh, sh, dh, top, in_hw[0], out_hw[0])
    cols = _axis_taps(kw, sw, dw, left, in_hw[1], out_hw[1])
    table = _gather_table(rows, cols, in_hw, out_hw)
    gathered = relax.op.take(flat, relax.const(table.reshape(-1)), axis=2)
    return relax.op.sum(relax.op.reshape(gathered, (batch, channels, *in_hw, table.shape[1])), axis=[4])
