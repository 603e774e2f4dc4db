"""The direct NHWC CONV: one TE definition and one hand-written schedule, for the forward and the dgrad.

    out[n, h, w, o] = sum_{r, s, c} inp[n, h*S + r*D, w*S + s*D, c] * weight[o / T, r, s, c, o % T]

``inp`` is already padded (layout.py); ``o`` is a multiple of the vector lanes (the caller pads the weights),
so the output channels vectorise with no tail. The weights come packed by channel tile (T = the tile's
channels, ``weight_tile``): a tile's weights are one contiguous stream over (r, s, c), where in [R, S, C, O]
each step of c jumped O channels (512-channel layers ran at half speed). The register tile is ``pixels``
output pixels x ``vectors`` channel vectors, accumulated over the whole reduction (r, s, c outside the tile);
one parallel task per (channel tile, image, output row). Written NCHW (``channels_first``), the tile stays
(pixel, channel) in registers and only its write-back stores rows of TW pixels per channel: +0.1-0.5 ms on
resnet18's 3x3 layers, where the NHWC -> NCHW copy it saves took 1.7 ms on a cold 8 MB output. Stride-1 dgrad
is this CONV over padded dY with the flipped, transposed weights (rewrite.py).
"""

from tvm import s_tir, te

from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels
from .tiles import conv_tile


def weight_tile(isa, dtype, out_channels, out_width):
    """T: the output channels of the register tile, by which the caller packs the weights."""
    return conv_tile(isa, dtype, out_channels, out_width).channels


def direct_conv(inp_shape, weight_shape, stride, dilation, out_hw, dtype, isa, channels_first=False):
    """PrimFunc(inp [N, Hp, Wp, C], weight [O/T, R, S, C, T]) -> out [N, OH, OW, O], or [N, O, OH, OW] when
    ``channels_first``, scheduled for ``isa``; ``weight_shape`` is the logical [R, S, C, O]."""
    n_, _, _, c_ = inp_shape
    kr, ks, _, o_ = weight_shape
    oh_, ow_ = out_hw
    tile = conv_tile(isa, dtype, o_, ow_)
    block = tile.channels
    inp = te.placeholder(inp_shape, dtype, name="inp")
    weight = te.placeholder((o_ // block, kr, ks, c_, block), dtype, name="weight")
    r = te.reduce_axis((0, kr), "r")
    s = te.reduce_axis((0, ks), "s")
    c = te.reduce_axis((0, c_), "c")

    def value(n, h, w, o):
        return te.sum(
            inp[n, h * stride[0] + r * dilation[0], w * stride[1] + s * dilation[1], c] * weight[o // block, r, s, c, o % block],
            axis=[r, s, c],
        )

    if channels_first:
        out = te.compute((n_, o_, oh_, ow_), lambda n, o, h, w: value(n, h, w, o), name="conv")
    else:
        out = te.compute((n_, oh_, ow_, o_), value, name="conv")
    return _schedule(te.create_prim_func([inp, weight, out]), tile, channels_first)


def _schedule(func, tile, channels_first):
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv")
    if channels_first:
        n, o, h, w, r, s, c = sch.get_loops(block)
    else:
        n, h, w, o, r, s, c = sch.get_loops(block)
    w_outer, w_tile = sch.split(w, [None, tile.pixels])
    o_outer, o_vectors, o_lanes = split_channels(sch, o, tile)
    # channel tiles outermost: consecutive tasks share one tile of the weights, which stays in cache (on
    # 4x4 maps with 512 channels, tasks over (n, h) first re-read all 9 MB of weights per output row)
    sch.reorder(o_outer, n, h, w_outer, r, s, c, w_tile, o_vectors, o_lanes)
    parallel_outer(sch, [o_outer, n, h])
    sch.unroll(w_tile)
    sch.unroll(o_vectors)
    sch.vectorize(o_lanes)
    # NCHW out: the register tile stays (pixel, channel) and its write-back stores TW-pixel rows per channel
    accumulate_in_registers(sch, block, w_outer, r, (lambda n, o, h, w: (n, h, w, o)) if channels_first else None)
    return scheduled(sch)
