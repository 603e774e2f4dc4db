"""The NHWC CONV weight gradient: one TE definition, one hand-written schedule.

    dW[r, s, c, o] = sum_{n, h, w} inp[n, h*S + r*D, w*S + s*D, c] * dy[n, h, w, o]

``inp`` is X padded (layout.py), ``o`` a multiple of the vector lanes (dY's channels padded).  Stride
and dilation only move the read of X, so a stride-2 layer costs exactly its own FLOPs (TVM's generic
gradient computes a larger kernel and slices it).  The register tile is ``pixels`` input channels
(broadcast) x ``vectors`` vectors of output channels; the reduction is blocked by image row (n, h
outside, the r, s tiles inside, w innermost), which keeps X's row and dY's row in cache while every
tap uses them (spikes/nhwc-conv: 2.35x -> 0.99x oneDNN).  One parallel task per channel tile.

On a small dY map (resnet18's 4x4 layers) a row is too short to pay for writing the tile back to dW at
every (n, h, r, s): there the taps go outside and the tile stays in registers over the whole n, h, w
reduction (512->512 at 4x4, batch 32: 28.6 ms by rows, 5.6 ms so, oneDNN 6.9).
"""

from tvm import s_tir, te

from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels, vectorize_last_loop
from .tiles import conv_tile

SMALL_MAP = 16  # dY pixels per image at or below which the reduction is not blocked by row


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
    func = te.create_prim_func([inp, dy, dw])
    return _schedule(func, tile, taps_outside=oh_ * ow_ <= SMALL_MAP)


def _schedule(func, tile, taps_outside):
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("wgrad")
    r, s, c, o, n, h, w = sch.get_loops(block)
    c_outer, c_tile = sch.split(c, [None, tile.pixels])
    o_outer, o_vectors, o_lanes = split_channels(sch, o, tile)
    reduction = (r, s, n, h, w) if taps_outside else (n, h, r, s, w)
    sch.reorder(c_outer, o_outer, *reduction, c_tile, o_vectors, o_lanes)
    parallel_outer(sch, [c_outer, o_outer])
    sch.unroll(c_tile)
    sch.unroll(o_vectors)
    sch.vectorize(o_lanes)
    if taps_outside:
        accumulate_in_registers(sch, block, s, n)
    else:
        vectorize_last_loop(sch, sch.decompose_reduction(block, n))
    return scheduled(sch)
