"""TVM's CPU pipeline, with every kernel that nothing else schedules run in parallel over its spatial loops.

TVM's default CPU pipeline schedules nothing: each kernel that neither a hand-written template
(compiler/kernels/) nor a tuning database covers (elementwise ops, BatchNorm statistics and their gradients,
casts, the SGD update) is one serial loop nest, so on a two-core device it uses one core.  ``ParallelSpatial``
fuses each block's data-parallel loops into one parallel loop, the reduction loops inside it; TVM's schedule
primitives refuse a loop that is not data-parallel, and such a kernel is left as it was.
"""

import math

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

# below this many loop iterations a kernel runs serially: a parallel launch costs a few microseconds
MIN_PARALLEL_WORK = 16384


def _extent(sch, loop):
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class ParallelSpatial(dlight.ScheduleRule):
    """Per block: spatial loops fused outermost and run in parallel, reduction loops inside them."""

    def is_target_available(self, target):
        return target.kind.name == "llvm"

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None:
            return None
        changed = False
        for block in try_inline(sch, blocks):
            loops = sch.get_loops(block.block_rv)
            kinds = block.dom_kind()
            if len(loops) != len(kinds):
                continue
            spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
            extents = [_extent(sch, loop) for loop in loops]
            if not spatial or None in extents or math.prod(extents) < MIN_PARALLEL_WORK:
                continue
            if math.prod(e for e, kind in zip(extents, kinds) if kind == "S") < 2:
                continue
            try:
                sch.reorder(*spatial, *[loop for loop, kind in zip(loops, kinds) if kind != "S"])
                sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
            except s_tir.ScheduleError:
                return None  # a schedule half-applied is not kept
            changed = True
        return sch if changed else None


def cpu_pipeline(target):
    """relax.backend.cpu_generic's default pipeline with ParallelSpatial after operator fusion."""
    cpu = relax.backend.cpu_generic.pipeline
    passes = (cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
              + [dlight.ApplyDefaultSchedule(ParallelSpatial())]
              + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
    return tvm.transform.Sequential(passes)  # tvm.compile runs it under `with target`
