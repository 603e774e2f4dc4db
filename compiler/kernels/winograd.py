"""Winograd F(2x2, 3x3) for the stride-1 3x3 CONV (forward, and the equal-shape dgrad): 2.25x fewer multiplies.

Each 2x2 block of output pixels (a tile) comes from a 4x4 window of input: V = B^T d B, M = sum_c V_c * U_c
elementwise over the 16 positions (U = G g G^T, the transformed 3x3 filter), Y = A^T M A.  The transforms are
fused into the task that uses them: one parallel task per (channel tile, image, row of tiles) transforms its
rows of input into a task-local buffer (TW x 16 x C, <= 64 KB on resnet18), runs the 16 GEMMs with the same
register tile as direct.py (TW tiles broadcast x V channel vectors, accumulated over C), and writes its 2 output
rows.  Unfused, the transformed input alone is 4x X (33 MB for resnet18's 64-channel layer at batch 32).
Sums are taken in another order than direct.py's, so results differ from it by rounding (float32: ~1e-6 of
the largest output).
"""

from tvm import s_tir, te, tirx

from .layout import clamp
from .schedule import accumulate_in_registers, parallel_outer, scheduled, split_channels
from .tiles import conv_tile, largest_divisor


def _input_row(v, i):
    """Row ``i`` of B^T applied to the 4 values ``v``: B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]."""
    return tirx.Select(i == 0, v[0] - v[2], tirx.Select(i == 1, v[1] + v[2], tirx.Select(i == 2, v[2] - v[1], v[1] - v[3])))


def _output_row(m, i):
    """Row ``i`` of A^T applied to the 4 values ``m``: A^T = [[1,1,1,0],[0,1,-1,-1]]."""
    return tirx.Select(i == 0, m[0] + m[1] + m[2], m[1] - m[2] - m[3])


def _filter_row(g, i, dtype):
    """Row ``i`` of G applied to the 3 values ``g``: G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]]."""
    half = tirx.const(0.5, dtype)
    return tirx.Select(i == 0, g[0], tirx.Select(i == 1, (g[0] + g[1] + g[2]) * half,
                                                 tirx.Select(i == 2, (g[0] - g[1] + g[2]) * half, g[2])))


def input_transform(inp):
    """(n, th, tw, xi, nu, c) -> V = B^T d B of the 4x4 window of the padded NHWC ``inp`` under tile (th, tw)."""

    def value(n, th, tw, xi, nu, c):
        cols = [_input_row([inp[n, 2 * th + a, 2 * tw + b, c] for a in range(4)], xi) for b in range(4)]
        return _input_row(cols, nu)

    return value


def applies(kernel_hw, stride, dilation, out_hw):
    """Whether a CONV of this geometry runs as Winograd F(2x2, 3x3): 3x3, stride 1, no dilation, an even output of
    at least 2 x 2 tiles (a 2x2 map, one tile, would leave the register tile a single broadcast)."""
    return (kernel_hw == (3, 3) and stride == (1, 1) and dilation == (1, 1)
            and all(s % 2 == 0 and s >= 4 for s in out_hw))


def winograd_filter(weight_shape, dtype, out_channels, block, flipped):
    """PrimFunc(weight [O, C, 3, 3]) -> U [O'/T, 4, 4, C, T] = G g G^T per (o, c), channels O..O' zero.
    ``flipped``: the dgrad's filter, weight[c, o] rotated by 180 degrees ([C, O] of the forward's weight)."""
    o_, c_, _, _ = weight_shape
    if flipped:
        o_, c_ = c_, o_
    weight = te.placeholder(weight_shape, dtype, name="weight")

    def tap(o, c, r, s):
        return weight[c, o, 2 - r, 2 - s] if flipped else weight[o, c, r, s]

    def value(ob, xi, nu, c, t):
        o = ob * block + t
        rows = [_filter_row([tap(clamp(o, o_), c, r, s) for r in range(3)], xi, dtype) for s in range(3)]
        return tirx.if_then_else(o < o_, _filter_row(rows, nu, dtype), tirx.const(0, dtype))

    out = te.compute((out_channels // block, 4, 4, c_, block), value, name="winograd_filter")
    sch = s_tir.Schedule(te.create_prim_func([weight, out]))
    ob, xi, nu, c, t = sch.get_loops(sch.get_sblock("winograd_filter"))
    # per (o, c): its 9 contiguous taps read once, 16 values written
    sch.reorder(ob, c, t, xi, nu)
    parallel_outer(sch, [ob, c])
    sch.unroll(xi)
    sch.unroll(nu)
    return scheduled(sch)


def channel_tile(isa, dtype, out_channels, out_hw):
    """T: the output channels of winograd_conv's register tile, by which winograd_filter packs U."""
    return _register_tile(isa, dtype, out_channels, out_hw)[0].channels


def _register_tile(isa, dtype, out_channels, out_hw):
    """(the GEMMs' register tile, the rows of tiles one task takes) for an ``out_hw`` output."""
    tiles_per_row = out_hw[1] // 2
    rows = tile_rows(out_hw[0] // 2, tiles_per_row, isa)
    return conv_tile(isa, dtype, out_channels, rows * tiles_per_row), rows


def winograd_conv(inp_shape, weight_channels, out_hw, dtype, isa, channels_first=False):
    """PrimFunc(inp [N, OH+2, OW+2, C], U [O/T, 4, 4, C, T]) -> out [N, OH, OW, O] (or [N, O, OH, OW]):
    the 3x3 stride-1 CONV of the padded ``inp``; ``weight_channels`` is O, a multiple of the lanes."""
    n_, _, _, c_ = inp_shape
    o_ = weight_channels
    oh_, ow_ = out_hw
    th_, tw_ = oh_ // 2, ow_ // 2
    tile, rows = _register_tile(isa, dtype, o_, out_hw)
    block = tile.channels
    inp = te.placeholder(inp_shape, dtype, name="inp")
    u = te.placeholder((o_ // block, 4, 4, c_, block), dtype, name="u")

    v = te.compute((n_, th_, tw_, 4, 4, c_), input_transform(inp), name="v")
    c = te.reduce_axis((0, c_), "c")
    m = te.compute((n_, th_, tw_, 4, 4, o_),
                   lambda n, th, tw, xi, nu, o: te.sum(v[n, th, tw, xi, nu, c] * u[o // block, xi, nu, c, o % block], axis=c),
                   name="m")

    def value(n, h, w, o):
        th, i, tw, j = h // 2, h % 2, w // 2, w % 2
        rows = [_output_row([m[n, th, tw, a, b, o] for a in range(4)], i) for b in range(4)]
        return _output_row(rows, j)

    if channels_first:
        out = te.compute((n_, o_, oh_, ow_), lambda n, o, h, w: value(n, h, w, o), name="conv")
    else:
        out = te.compute((n_, oh_, ow_, o_), value, name="conv")
    return _schedule(te.create_prim_func([inp, u, out]), tile, rows, channels_first)


def tile_rows(tile_rows_in_map, tiles_per_row, isa):
    """Rows of tiles one task transforms and multiplies: on small maps (8x8, 4x4: 4 and 2 tiles a row) one row
    is too few tiles to fill the register tile, so a task takes as many rows as fit it."""
    return largest_divisor(tile_rows_in_map, max(1, isa.accumulators // 2 // tiles_per_row))


def _schedule(func, tile, rows, channels_first):
    sch = s_tir.Schedule(func)
    conv = sch.get_sblock("conv")
    if channels_first:
        n, o, h, w = sch.get_loops(conv)
    else:
        n, h, w, o = sch.get_loops(conv)
    th, i = sch.split(h, [None, 2])
    th_outer, th_inner = sch.split(th, [None, rows])
    tw, j = sch.split(w, [None, 2])
    o_outer, o_vectors, o_lanes = split_channels(sch, o, tile)
    sch.reorder(o_outer, n, th_outer, th_inner, tw, i, j, o_vectors, o_lanes)
    task = parallel_outer(sch, [o_outer, n, th_outer])
    sch.unroll(i)
    sch.unroll(j)
    sch.unroll(o_vectors)
    sch.vectorize(o_lanes)
    if channels_first:  # the task's output rows go to a channels-last buffer first, then out by rows of pixels
        staged = sch.cache_write(conv, 0, "global")
        sch.transform_layout(conv, ("write", 0), lambda n, o, h, w: (n, h, w, o))
        sch.reverse_compute_at(staged, task)
        sch.vectorize(sch.get_loops(staged)[-1])

    m = sch.get_sblock("m")
    sch.compute_at(m, task)
    *tiles_m, xi, nu, o_m, c = sch.get_loops(m)[1:]  # (rows of tiles, when a task has more than one), tiles
    tw_outer, tw_tile = sch.split(_fused(sch, tiles_m), [None, tile.pixels])
    o_vectors_m, o_lanes_m = sch.split(o_m, [None, tile.lanes])
    sch.reorder(xi, nu, tw_outer, c, tw_tile, o_vectors_m, o_lanes_m)
    sch.unroll(tw_tile)
    sch.unroll(o_vectors_m)
    sch.vectorize(o_lanes_m)
    accumulate_in_registers(sch, m, tw_outer, c)

    v = sch.get_sblock("v")
    sch.compute_at(v, task)
    *tiles_v, xi_v, nu_v, c_v = sch.get_loops(v)[1:]
    tw_v = _fused(sch, tiles_v)
    c_outer, c_lanes = sch.split(c_v, [None, largest_divisor(sch.get(c_v).extent.value, tile.lanes)])
    sch.reorder(tw_v, c_outer, xi_v, nu_v, c_lanes)
    sch.unroll(xi_v)
    sch.unroll(nu_v)
    sch.vectorize(c_lanes)
    return scheduled(sch)


def _fused(sch, loops):
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]
