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
reduction (512->512 at 4x4, batch 32: 28.6 ms by rows, 5.6 ms so, oneDNN 6.9).  Written once, the tile can
go straight to ONNX's [O, C, R, S] (``oihw``): the [R, S, C, O] -> OIHW copy it saves took 2.2 ms a call on
a 512x512 3x3 gradient.
"""

from tvm import s_tir, te

from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels, vectorize_last_loop
from .tiles import conv_tile

SMALL_MAP = 16  # dY pixels per image at or below which the reduction is not blocked by row


def dy_tile(isa, dtype, out_channels, in_channels):
    """T: the output channels of the register tile, by which the caller packs dY."""
    return conv_tile(isa, dtype, out_channels, in_channels).channels


def tile_in_registers(dy_shape):
    """Whether the taps go outside and the register tile stays over the whole reduction, written once (a small
    dY map): then the kernel can also write dW as [O, C, R, S] itself."""
    return dy_shape[1] * dy_shape[2] <= SMALL_MAP


def weight_grad(inp_shape, dy_shape, kernel_hw, stride, dilation, dtype, isa, oihw=False):
    """PrimFunc(inp [N, Hp, Wp, C], dy [O/T, N, OH, OW, T]) -> dW [R, S, C, O], or [O, C, R, S] when ``oihw``
    (``tile_in_registers`` maps only), scheduled for ``isa``; ``dy_shape`` is the logical [N, OH, OW, O].  dY
    comes packed by channel tile (``dy_tile``) so that a tile's dY row is contiguous."""
    n_, _, _, c_ = inp_shape
    _, oh_, ow_, o_ = dy_shape
    if oihw and not tile_in_registers(dy_shape):
        raise ValueError(f"an OIHW weight gradient needs a map of at most {SMALL_MAP} pixels, got {oh_}x{ow_}")
    tile = conv_tile(isa, dtype, o_, c_)
    block = tile.channels
    inp = te.placeholder(inp_shape, dtype, name="inp")
    dy = te.placeholder((o_ // block, n_, oh_, ow_, block), dtype, name="dy")
    n = te.reduce_axis((0, n_), "n")
    h = te.reduce_axis((0, oh_), "h")
    w = te.reduce_axis((0, ow_), "w")

    def value(r, s, c, o):
        return te.sum(
            inp[n, h * stride[0] + r * dilation[0], w * stride[1] + s * dilation[1], c] * dy[o // block, n, h, w, o % block],
            axis=[n, h, w],
        )

    if oihw:
        dw = te.compute((o_, c_, *kernel_hw), lambda o, c, r, s: value(r, s, c, o), name="wgrad")
    else:
        dw = te.compute((*kernel_hw, c_, o_), value, name="wgrad")
    func = te.create_prim_func([inp, dy, dw])
    return _schedule(func, tile, tile_in_registers(dy_shape), oihw)


def _schedule(func, tile, taps_outside, oihw):
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("wgrad")
    if oihw:
        o, c, r, s, n, h, w = sch.get_loops(block)
    else:
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
        # OIHW out: the register tile stays (input channel, output channel) and its write-back scatters
        accumulate_in_registers(sch, block, s, n, (lambda o, c, r, s: (r, s, c, o)) if oihw else None)
    else:
        vectorize_last_loop(sch, sch.decompose_reduction(block, n))
    return scheduled(sch)
