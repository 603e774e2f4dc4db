"""Schedule steps every hand-written kernel shares."""

from tvm import s_tir


def parallel_outer(sch, loops):
    """Fuse the outer ``loops`` into one parallel loop (returned): one task per fused iteration."""
    loop = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(loop)
    return loop


def parallel_copy(func, name, outer):
    """Schedule a layout or packing kernel: its ``outer`` loops fused into one parallel loop."""
    sch = s_tir.Schedule(func)
    parallel_outer(sch, sch.get_loops(sch.get_sblock(name))[:outer])
    return scheduled(sch)


def split_channels(sch, loop, tile):
    """Split an output-channel loop into (tiles, vectors per tile, lanes), the vectors unrolled, lanes vectorised."""
    outer, inner = sch.split(loop, [None, tile.channels])
    vectors, lanes = sch.split(inner, [None, tile.lanes])
    return outer, vectors, lanes


def vectorize_last_loop(sch, *blocks):
    """Vectorise the innermost loop of each block (init and write-back blocks of a tiled reduction)."""
    for block in blocks:
        sch.vectorize(sch.get_loops(block)[-1])


OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps fuses nothing into it (FuseTIR would drop the schedule)


def accumulate_in_registers(sch, block, tile_loop, first_reduction, tile_layout=None):
    """Keep the register tile in a local buffer written back once per ``tile_loop`` iteration; init and
    write-back vectorised.  ``tile_layout`` (an index map of the output's indices) orders the local buffer
    when the output's own order is not the tile's."""
    accumulators = sch.cache_write(block, 0, "global")
    if tile_layout is not None:
        sch.transform_layout(block, ("write", 0), tile_layout)
    sch.reverse_compute_at(accumulators, tile_loop)
    init = sch.decompose_reduction(block, first_reduction)
    vectorize_last_loop(sch, init, accumulators)


def scheduled(sch):
    """The scheduled PrimFunc, marked so TVM's default schedules, MetaSchedule and FuseOps leave it as it is; its
    symbol comes from the name it is added under (AttachGlobalSymbol), not TE's "main"."""
    func = sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", OPAQUE)
    return func.without_attr("global_symbol")
