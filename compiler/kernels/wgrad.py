"""The NHWC CONV weight gradient: one TE definition, one hand-written schedule.

    dW[r, s, c, o] = sum_{n, h, w} inp[n, h*S + r*D, w*S + s*D, c] * dy[n, h, w, o]

``inp`` is X padded (layout.py), ``o`` dY's channels padded to whole tiles (``plan``).  Stride
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

A skeleton's k output channels are rarely a multiple of the lanes (k = 7, 13, 26, 52 on resnet18 at r = 0.1):
padded to them, up to 16/7 of the FLOPs are zeros.  Where X's channels fill whole vectors the tile turns
round (``Plan.by_input_channel``): input channels in the vector lanes, k output channels broadcast from dY,
so that only the broadcast tile is rounded up (to a divisor near k).  The whole wgrad of resnet18's r = 0.1
skeleton layers, both tilings interleaved in one process: 64->64 k = 7 at 32x32 3.59 -> 1.95 ms, 256->512
k = 52 stride 2 0.88 -> 0.64 ms, the other 3x3 layers 0.84-0.96x their time; results bit-identical (each
sum keeps its order).
"""

from dataclasses import dataclass

from tvm import s_tir, te

from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels, vectorize_last_loop
from .tiles import ConvTile, conv_tile

SMALL_MAP = 16  # dY pixels per image at or below which the reduction is not blocked by row


@dataclass(frozen=True)
class Plan:
    """How one weight gradient is tiled: its register tile, which channels the tile's vectors hold, and the
    output channels O' dY is padded to (a multiple of the lanes, or of the broadcast tile)."""

    tile: ConvTile
    by_input_channel: bool
    out_channels: int

    @property
    def dy_block(self):
        """dY's channels per packed tile (``layout.to_channel_tiles``): those one register tile reads."""
        return self.tile.pixels if self.by_input_channel else self.tile.channels

    def grad_shape(self, kernel_hw, in_channels):
        """The kernel's own dW layout: [R, S, C, O'] (output channels in lanes) or [R, S, O', C]."""
        channels = (self.out_channels, in_channels) if self.by_input_channel else (in_channels, self.out_channels)
        return (*kernel_hw, *channels)


def plan(isa, dtype, out_channels, in_channels):
    """The tiling with the fewer padded output channels: output channels in the lanes (padded to a multiple of
    them), or, where the input channels fill whole vectors, broadcast in groups of at most the accumulators."""
    lanes = isa.lanes(dtype)
    padded = isa.padded(out_channels, dtype)
    by_output = Plan(conv_tile(isa, dtype, padded, in_channels), False, padded)
    if in_channels % lanes:
        return by_output
    vectors = 2 if in_channels % (2 * lanes) == 0 else 1
    groups = -(-out_channels // (isa.accumulators // vectors))
    pixels = -(-out_channels // groups)
    if groups * pixels >= padded:
        return by_output
    return Plan(ConvTile(pixels, vectors, lanes), True, groups * pixels)


def tile_in_registers(dy_shape):
    """Whether the taps go outside and the register tile stays over the whole reduction, written once (a small
    dY map): then the kernel can also write dW as [O, C, R, S] itself."""
    return dy_shape[1] * dy_shape[2] <= SMALL_MAP


def weight_grad(inp_shape, dy_shape, kernel_hw, stride, dilation, dtype, tiling, oihw=False):
    """PrimFunc(inp [N, Hp, Wp, C], dy [O'/T, N, OH, OW, T]) -> dW in ``tiling.grad_shape``, or [O', C, R, S] when
    ``oihw`` (``tile_in_registers`` maps only); ``dy_shape`` is the logical [N, OH, OW, O'], ``tiling`` a ``Plan``
    for O' and C.  dY comes packed by ``tiling.dy_block`` channels so that a tile's dY row is contiguous."""
    n_, _, _, c_ = inp_shape
    _, oh_, ow_, o_ = dy_shape
    if oihw and not tile_in_registers(dy_shape):
        raise ValueError(f"an OIHW weight gradient needs a map of at most {SMALL_MAP} pixels, got {oh_}x{ow_}")
    block = tiling.dy_block
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
    elif tiling.by_input_channel:
        dw = te.compute(tiling.grad_shape(kernel_hw, c_), lambda r, s, o, c: value(r, s, c, o), name="wgrad")
    else:
        dw = te.compute(tiling.grad_shape(kernel_hw, c_), value, name="wgrad")
    func = te.create_prim_func([inp, dy, dw])
    return _schedule(func, tiling, tile_in_registers(dy_shape), oihw)


def _schedule(func, tiling, taps_outside, oihw):
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("wgrad")
    order = "ocrs" if oihw else "rsoc" if tiling.by_input_channel else "rsco"
    loops = dict(zip(order + "nhw", sch.get_loops(block)))
    r, s, n, h, w = (loops[name] for name in "rsnhw")
    broadcast, vector = (loops["o"], loops["c"]) if tiling.by_input_channel else (loops["c"], loops["o"])
    b_outer, b_tile = sch.split(broadcast, [None, tiling.tile.pixels])
    v_outer, v_vectors, v_lanes = split_channels(sch, vector, tiling.tile)
    reduction = (r, s, n, h, w) if taps_outside else (n, h, r, s, w)
    sch.reorder(b_outer, v_outer, *reduction, b_tile, v_vectors, v_lanes)
    parallel_outer(sch, [b_outer, v_outer])
    sch.unroll(b_tile)
    sch.unroll(v_vectors)
    sch.vectorize(v_lanes)
    if taps_outside:
        # OIHW out: the register tile stays (broadcast channel, vector channel) and its write-back scatters
        tile_layout = (lambda o, c, r, s: (r, s, o, c)) if tiling.by_input_channel else (lambda o, c, r, s: (r, s, c, o))
        accumulate_in_registers(sch, block, s, n, tile_layout if oihw else None)
    else:
        vectorize_last_loop(sch, sch.decompose_reduction(block, n))
    return scheduled(sch)
