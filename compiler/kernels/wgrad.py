"""The NHWC CONV weight gradient: one TE definition, one hand-written schedule.

    dW[r, s, c, o] = sum_{n, h, w} inp[n, h*S + r*D, w*S + s*D, c] * dy[n, h, w, o]

``inp`` is X padded (layout.py), ``o`` a multiple of the vector lanes (dY's channels padded).  Stride
and dilation only move the read of X, so a stride-2 layer costs exactly its own FLOPs (TVM's generic
gradient computes a larger kernel and slices it).  The register tile is ``pixels`` input channels
(broadcast) x ``vectors`` vectors of output channels; the reduction is blocked by image row (n, h
outside, the r, s tiles inside, w innermost), which keeps X's row and dY's row in cache while every
tap uses them (spikes/nhwc-conv: 2.35x -> 0.99x oneDNN).  One parallel task per channel tile.
"""

from tvm import s_tir, te

from .schedule import parallel_outer, scheduled, split_channels, vectorize_last_loop
from .tiles import conv_tile


def dy_tile(isa, dtype, out_channels, in_channels):
    """T: the output channels of the register tile, by which the caller packs dY."""
    return conv_tile(isa, dtype, out_channels, in_channels).channels


def weight_grad(inp_shape, dy_shape, kernel_hw, stride, dilation, dtype, isa):
    """PrimFunc(inp [N, Hp, Wp, C], dy [O/T, N, OH, OW, T]) -> dW [R, S, C, O], scheduled for ``isa``;
    ``dy_shape`` is the logical [N, OH, OW, O].  dY comes packed by channel tile (``dy_tile``) so that a
    tile's dY row is contiguous."""
    n_, _, _, c_ = inp_shape
    _, oh_, ow_, o_ = dy_shape
    tile = conv_tile(isa, dtype, o_, c_)
    block = tile.channels
    inp = te.placeholder(inp_shape, dtype, name="inp")
    dy = te.placeholder((o_ // block, n_, oh_, ow_, block), dtype, name="dy")
    n = te.reduce_axis((0, n_), "n")
    h = te.reduce_axis((0, oh_), "h")
    w = te.reduce_axis((0, ow_), "w")
    dw = te.compute(
        (*kernel_hw, c_, o_),
        lambda r, s, c, o: te.sum(
            inp[n, h * stride[0] + r * dilation[0], w * stride[1] + s * dilation[1], c] * dy[o // block, n, h, w, o % block],
            axis=[n, h, w],
        ),
        name="wgrad",
    )
    return _schedule(te.create_prim_func([inp, dy, dw]), tile)


def _schedule(func, tile):
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("wgrad")
    r, s, c, o, n, h, w = sch.get_loops(block)
    c_outer, c_tile = sch.split(c, [None, tile.pixels])
    o_outer, o_vectors, o_lanes = split_channels(sch, o, tile)
    sch.reorder(c_outer, o_outer, n, h, r, s, w, c_tile, o_vectors, o_lanes)
    parallel_outer(sch, [c_outer, o_outer])
    sch.unroll(c_tile)
    sch.unroll(o_vectors)
    sch.vectorize(o_lanes)
    init = sch.decompose_reduction(block, n)
    vectorize_last_loop(sch, init)
    return scheduled(sch)
