"""TVM's CPU pipeline, with every kernel that nothing else schedules run in parallel over its spatial loops.

TVM's default CPU pipeline schedules nothing: each kernel that neither a hand-written template
(compiler/kernels/) nor a tuning database covers (elementwise ops, BatchNorm statistics and their gradients,
casts, the SGD update) is one serial loop nest, so on a two-core device it uses one core.  ``ParallelSpatial``
fuses each block's data-parallel loops into one parallel loop, the reduction loops inside it; TVM's schedule
primitives refuse a loop that is not data-parallel, and such a kernel is left as it was.

Inside each task the innermost loops run in vector lanes where their extent allows.  Elementwise: one fused loop
computes every element's indices by division, scalar code, up to 15x slower (digits-cnn's max-pool backward
357 -> 23 us; resnet18's ReLU backward 2-4x); a [Cout, Cin, 3, 3] weight's last axis takes no lanes, so the
lanes run over Cin x 3 x 3 (digits-cnn's skeleton gradient scatter and SGD: its r = 0.3 step 0.60 -> 0.53 ms).
Sums (BatchNorm statistics and gradients, importance): one partial sum per lane (rfactor) instead of one
float64 add chain, 3-10x on resnet18's.
"""

import math

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

from fedskel.compiler.kernels.schedule import parallel_outer

from .legalize import with_our_legalization

# below this many loop iterations a kernel runs serially: a parallel launch costs a few microseconds
MIN_PARALLEL_WORK = 16384
# widths tried for a block's innermost loop, widest first (LLVM splits a vector wider than the ISA's)
VECTOR_LANES = (16, 8, 4)


def _extent(sch, loop):
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class ParallelSpatial(dlight.ScheduleRule):
    """Per block: spatial loops fused outermost and run in parallel, reduction loops inside them; the innermost
    loop (elementwise) or innermost reduction loop (sums) in vector lanes."""

    def is_target_available(self, target):
        return target.kind.name == "llvm"

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        # a kernel with a block whose vector schedule TVM refuses gets the scalar one; none half-applied is kept
        for vectorize in (True, False):
            try:
                return self._schedule(func, vectorize)
            except s_tir.ScheduleError:
                continue
        return None

    def _schedule(self, func, vectorize):
        """The scheduled kernel, or None where no block is large enough to pay for a parallel loop."""
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
            reduction = [loop for loop, kind in zip(loops, kinds) if kind != "S"]
            extents = [_extent(sch, loop) for loop in loops]
            if not spatial or None in extents or math.prod(extents) < MIN_PARALLEL_WORK:
                continue
            if math.prod(e for e, kind in zip(extents, kinds) if kind == "S") < 2:
                continue
            sch.reorder(*spatial, *reduction)
            if reduction:
                outer = parallel_outer(sch, spatial)
                if vectorize:
                    self._reduce_in_vector_lanes(sch, block.block_rv, outer, reduction)
            else:
                self._parallel_outer_vector_inner(sch, spatial, vectorize)
            changed = True
        return sch if changed else None

    @staticmethod
    def _parallel_outer_vector_inner(sch, spatial, vectorize):
        """The shortest suffix of the spatial loops whose extent the vector lanes divide fused and split by the
        lanes, the lanes vectorised, everything outside them fused into one parallel loop: a [Cout, Cin, 3, 3]
        weight runs 16 lanes over Cin x 3 x 3 (its last loop alone, 3, takes none).  All loops fused, scalar,
        where no suffix divides (a short serial loop inside each task runs slower)."""
        suffix = _vector_suffix(sch, spatial) if vectorize else None
        if suffix is None:
            parallel_outer(sch, spatial)
            return
        count, lanes = suffix
        inner = sch.fuse(*spatial[-count:]) if count > 1 else spatial[-1]
        outer, lane = sch.split(inner, [None, lanes])
        parallel_outer(sch, [*spatial[:-count], outer])
        sch.vectorize(lane)

    @staticmethod
    def _reduce_in_vector_lanes(sch, block, outer, reduction):
        """Split the innermost reduction loop by the vector lanes and sum each lane apart (rfactor), the lanes
        added at the end of each parallel task: vector loads, and as many independent float64 add chains as
        lanes (a serial sum waits out one add's latency per element)."""
        lanes = _lanes(sch, reduction[-1])
        # at least two elements per lane, so a reduction loop stays around the lanes after compute_at
        if lanes is None or math.prod(_extent(sch, loop) for loop in reduction) < 2 * lanes:
            return
        partial = sch.rfactor(sch.split(reduction[-1], [None, lanes])[1], factor_axis=len(sch.get(block).writes[0].region))
        sch.compute_at(partial, outer)  # rfactor gave the lane sums a loop nest of their own
        _, lane, *reduce = sch.get_loops(partial)
        sch.reorder(*reduce, lane)
        sch.vectorize(lane)  # before the init is split off: TVM vectorises no loop of a bare update block
        init = sch.decompose_reduction(partial, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])


def _vector_suffix(sch, loops):
    """(how many of the innermost ``loops``, lanes): the widest of VECTOR_LANES that divides the fused extent of
    some innermost loops, with the fewest loops for it; None where no suffix is divisible."""
    extents = [_extent(sch, loop) for loop in loops]
    for lanes in VECTOR_LANES:
        for count in range(1, len(loops) + 1):
            if math.prod(extents[-count:]) % lanes == 0:
                return count, lanes
    return None


def _lanes(sch, loop):
    """The widest of VECTOR_LANES that divides ``loop``'s extent, or None."""
    return next((lanes for lanes in VECTOR_LANES if _extent(sch, loop) % lanes == 0), None)


def cpu_pipeline(target):
    """relax.backend.cpu_generic's default pipeline with our legalizations (legalize.py) and ParallelSpatial after
    operator fusion."""
    cpu = relax.backend.cpu_generic.pipeline
    passes = (cpu.library_dispatch_passes(target) + with_our_legalization(cpu.legalize_passes(target))
              + [dlight.ApplyDefaultSchedule(ParallelSpatial())]
              + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
    return tvm.transform.Sequential(passes)  # tvm.compile runs it under `with target`
