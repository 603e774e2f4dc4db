"""Winograd F(3x3, 2x2) for the weight gradient of a stride-1 3x3 CONV: 2.25x fewer multiplies than wgrad.py.

The weight gradient is a correlation of X with dY that yields a 3x3 result.  Per 2x2 block of dY (a tile) and
the 4x4 window of X under it, by the transposition principle applied to the forward's F(2x2, 3x3):

    dW = G^T [ sum over tiles and images of (A g A^T) * (B^T d B) ] G      (elementwise over 16 positions)

with the forward's B^T, A^T and G (winograd.py).  So the input transform is the forward's, dY's is adds only,
and the 3x3 output transform runs once per (o, c), not per tile: what is left is 16 GEMMs [C x T] x [T x O]
whose reduction runs over every tile of the batch.

One parallel task per (part of the batch, 64 output channels, 64 input channels): it transforms a block of
about 32 tiles of X and dY into task-local buffers (<= 256 KB), then for each of the 16 positions runs the
GEMM with a register tile of 8 input channels (broadcast) x 2 vectors of output channels, accumulated over
the block's tiles and added to the task's 16 x 64 x 64 sums.  The task's channel ranges decide how often each
transform is redone (once per other-side range: 4/To + 2/Tc of the GEMM's work); the batch is split into
parts where the channels alone give too few tasks, and the parts' sums are added by the output transform.
With one part, each task applies the output transform to its own sums while they are in cache (512 channels:
the sums are 16 MB).  Measured on resnet18 at batch 32 (bench/conv_kernels.py, layout kernels included, two runs):
the 3x3 stride-1 weight gradients 0.36-0.75x oneDNN's time, where wgrad.py's took 1.15-1.29x.
Sums are taken in another order than wgrad.py's, so results differ from it by rounding (float32: ~3e-7 of
the largest gradient).
"""

from dataclasses import dataclass

from tvm import s_tir, te, tirx

from .schedule import parallel_outer, scheduled, vectorize_last_loop
from .tiles import largest_divisor
from .winograd import input_transform

TASK_CHANNELS = 64  # each side of a task's channel block
BLOCK_TILES = 32  # tiles transformed together and reduced in registers before the sums are touched
MIN_TASKS = 8  # the batch is split into parts until (parts x channel blocks) reaches this


def _dy_row(g, i):
    """Row ``i`` of A applied to the 2 values ``g``: A = [[1,0],[1,1],[1,-1],[0,-1]]."""
    return tirx.Select(i == 0, g[0], tirx.Select(i == 1, g[0] + g[1], tirx.Select(i == 2, g[0] - g[1], -g[1])))


def _output_row(m, i, dtype):
    """Row ``i`` of G^T applied to the 4 values ``m``: G^T = [[1,1/2,1/2,0],[0,1/2,-1/2,0],[0,1/2,1/2,1]]."""
    half = tirx.const(0.5, dtype)
    return tirx.Select(i == 0, m[0] + (m[1] + m[2]) * half,
                       tirx.Select(i == 1, (m[1] - m[2]) * half, (m[1] + m[2]) * half + m[3]))


@dataclass(frozen=True)
class Plan:
    """How one Winograd weight gradient is split: register tile, task channel blocks, batch parts, block."""

    lanes: int
    vectors: int  # output-channel vectors in the register tile
    broadcast: int  # input channels in the register tile
    task_out: int  # To
    task_in: int  # Tc
    parts: int  # P: the batch split so that there are enough tasks
    images: int  # images per block of tiles
    rows: int  # rows of tiles per block (all of an image's when images > 1)

    @property
    def dy_block(self):
        """dY's channels per packed tile (layout.to_channel_tiles): one register tile's output channels."""
        return self.vectors * self.lanes


def plan(isa, dtype, dy_shape, in_channels):
    """The split for dY [N, OH, OW, O] (O a multiple of the lanes) and ``in_channels`` input channels."""
    n_, oh_, ow_, o_ = dy_shape
    lanes = isa.lanes(dtype)
    vectors = 2 if o_ % (2 * lanes) == 0 else 1
    out_block = vectors * lanes
    broadcast = largest_divisor(in_channels, isa.accumulators // vectors)
    task_out = out_block * largest_divisor(o_ // out_block, max(1, TASK_CHANNELS // out_block))
    task_in = broadcast * largest_divisor(in_channels // broadcast, max(1, TASK_CHANNELS // broadcast))
    channel_tasks = (o_ // task_out) * (in_channels // task_in)
    parts = largest_divisor(n_, -(-MIN_TASKS // channel_tasks))
    th_, tw_ = oh_ // 2, ow_ // 2
    if th_ * tw_ >= BLOCK_TILES:
        images, rows = 1, largest_divisor(th_, -(-BLOCK_TILES // tw_))
    else:
        images, rows = largest_divisor(n_ // parts, -(-BLOCK_TILES // (th_ * tw_))), th_
    return Plan(lanes, vectors, broadcast, task_out, task_in, parts, images, rows)


def weight_grad(inp_shape, dy_shape, dtype, tiling):
    """PrimFunc(inp [N, OH+2, OW+2, C] (X padded), dy [O/T, N, OH, OW, T]) -> dW [3, 3, C, O] (layout.filter_from_tiles
    makes it OIHW); ``dy_shape`` is the logical [N, OH, OW, O], ``tiling`` a ``Plan``."""
    n_, _, _, c_ = inp_shape
    _, oh_, ow_, o_ = dy_shape
    th_, tw_ = oh_ // 2, ow_ // 2
    block = tiling.dy_block
    part = n_ // tiling.parts
    row_blocks = th_ // tiling.rows
    blocks = part // tiling.images * row_blocks
    inp = te.placeholder(inp_shape, dtype, name="inp")
    dy = te.placeholder((o_ // block, n_, oh_, ow_, block), dtype, name="dy")

    def dy_transform(ob, n, th, tw, xi, nu, t):
        cols = [_dy_row([dy[ob, n, 2 * th + i, 2 * tw + j, t] for i in range(2)], xi) for j in range(2)]
        return _dy_row(cols, nu)

    v = te.compute((n_, th_, tw_, 4, 4, c_), input_transform(inp), name="v")
    u = te.compute((o_ // block, n_, th_, tw_, 4, 4, block), dy_transform, name="u")
    image = te.reduce_axis((0, tiling.images), "image")
    row = te.reduce_axis((0, tiling.rows), "row")
    col = te.reduce_axis((0, tw_), "col")

    def block_sum(p, b, xi, nu, c, o):
        n = p * part + b // row_blocks * tiling.images + image
        th = b % row_blocks * tiling.rows + row
        return te.sum(v[n, th, col, xi, nu, c] * u[o // block, n, th, col, xi, nu, o % block], axis=[image, row, col])

    mb = te.compute((tiling.parts, blocks, 4, 4, c_, o_), block_sum, name="mb")
    b = te.reduce_axis((0, blocks), "b")
    m = te.compute((tiling.parts, 4, 4, c_, o_), lambda p, xi, nu, c, o: te.sum(mb[p, b, xi, nu, c, o], axis=b), name="m")
    p = te.reduce_axis((0, tiling.parts), "p")

    def output(r, s, c, o):
        rows = [_output_row([m[p, xi, nu, c, o] for xi in range(4)], r, dtype) for nu in range(4)]
        return te.sum(_output_row(rows, s, dtype), axis=p)

    dw = te.compute((3, 3, c_, o_), output, name="wgrad")
    return _schedule(te.create_prim_func([inp, dy, dw]), tiling)


def _schedule(func, tiling):
    sch = s_tir.Schedule(func)
    m, dw = sch.get_sblock("m"), sch.get_sblock("wgrad")
    r, s, c, o, p = sch.get_loops(dw)
    if tiling.parts == 1:  # a task's sums are complete: it applies the output transform to them itself
        c_task, c_in = sch.split(c, [None, tiling.task_in])
        o_task, o_in = sch.split(o, [None, tiling.task_out])
        o_outer, o_lanes = sch.split(o_in, [None, tiling.lanes])
        sch.reorder(o_task, c_task, c_in, o_outer, p, r, s, o_lanes)
        task = parallel_outer(sch, [o_task, c_task])
        sch.compute_at(m, task)
        xi, nu, c, o, *b = _loops_under(sch, m, task)
        b = b[0] if b else None  # one block of tiles: compute_at made no loop over blocks
    else:  # the parts' sums go to memory; the output transform adds them up
        o_outer, o_lanes = sch.split(o, [None, tiling.lanes])
        sch.reorder(c, o_outer, p, r, s, o_lanes)
        parallel_outer(sch, [c])
        part, xi, nu, c, o, b = sch.get_loops(m)
        c_task, c = sch.split(c, [None, tiling.task_in])
        o_task, o = sch.split(o, [None, tiling.task_out])
        sch.reorder(part, o_task, c_task, xi, nu, c, o, b)
        task = parallel_outer(sch, [part, o_task, c_task])
    sch.unroll(r)  # the output transform's rows fold to constants
    sch.unroll(s)
    sch.vectorize(o_lanes)
    vectorize_last_loop(sch, sch.decompose_reduction(dw, p))
    _schedule_sums(sch, m, tiling, xi, nu, c, o, b, task)
    return scheduled(sch)


def _schedule_sums(sch, m, tiling, xi, nu, c, o, b, task):
    """One task's 16 GEMMs (loops ``xi``..``b`` of block ``m``): per block ``b`` of tiles (None: the task has one),
    transform its X and dY, then per position and register tile sum its tiles in registers (block ``mb``) and add
    that to the sums."""
    c_tiles, c_tile = sch.split(c, [None, tiling.broadcast])
    o_tiles, o_vectors, o_lanes = sch.split(o, [None, tiling.vectors, tiling.lanes])
    sch.reorder(*[b] * (b is not None), xi, nu, c_tiles, o_tiles, c_tile, o_vectors, o_lanes)
    sch.unroll(c_tile)
    sch.unroll(o_vectors)
    sch.vectorize(o_lanes)
    if b is not None:
        vectorize_last_loop(sch, sch.decompose_reduction(m, b))

    mb = sch.get_sblock("mb")
    sch.compute_at(mb, o_tiles)
    c_mb, o_mb, *reduction = _loops_under(sch, mb, o_tiles)
    o_mb_vectors, o_mb_lanes = sch.split(o_mb, [None, tiling.lanes])
    sch.reorder(*reduction, c_mb, o_mb_vectors, o_mb_lanes)
    sch.unroll(c_mb)
    sch.unroll(o_mb_vectors)
    sch.vectorize(o_mb_lanes)
    vectorize_last_loop(sch, sch.decompose_reduction(mb, reduction[0]))

    for name in ("v", "u"):
        transform = sch.get_sblock(name)
        anchor = task if b is None else b
        sch.compute_at(transform, anchor)
        *tiles, xi_t, nu_t, channels = _loops_under(sch, transform, anchor)
        outer, inner = sch.split(channels, [None, largest_divisor(sch.get(channels).extent.value, tiling.lanes)])
        sch.reorder(*tiles, outer, xi_t, nu_t, inner)
        sch.unroll(xi_t)
        sch.unroll(nu_t)
        sch.vectorize(inner)


def _loops_under(sch, block, loop):
    """The loops of ``block`` inside ``loop`` (compute_at leaves out those of extent 1)."""
    loops = sch.get_loops(block)
    outer = [sch.get(each).same_as(sch.get(loop)) for each in loops].index(True)
    return loops[outer + 1:]
