"""TVM's CUDA pipeline, made to schedule every kernel of a training module.

dlight tries its GPU rules in order and takes the first that returns a schedule. Two kernels of a training
graph break that: ``gpu.Reduction`` fails an assert on the legalized ``nll_loss`` backward instead of
declining, and ``gpu.GeneralReduction`` schedules the max-pool backward (an argmax, a two-value reduction)
as a cross-thread reduction that cannot be lowered, so the whole compile stops. Here a rule that fails, or
whose schedule cannot be lowered, declines, and the next rule (at the end, ``gpu.Fallback``) takes the kernel.
"""

import tvm
from tvm import relax, s_tir
from tvm.s_tir import dlight

from .legalize import with_our_legalization


class _DeclineWhatCannotLower(dlight.ScheduleRule):
    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            space = self.rule.apply(func, target, tunable)
            for schedule in [space] if isinstance(space, s_tir.Schedule) else space or []:
                s_tir.transform.LowerCrossThreadReduction()(schedule.mod)
        except (AssertionError, ValueError):
            return None
        return space


def cuda_pipeline(target):
    """relax.backend.cuda's default pipeline with every dlight rule wrapped in _DeclineWhatCannotLower."""
    cuda = relax.backend.cuda.pipeline
    legalize = [
        dlight.ApplyDefaultSchedule(*map(_DeclineWhatCannotLower, step.rules))
        if isinstance(step, dlight.ApplyDefaultSchedule)
        else step
        for step in with_our_legalization(cuda.legalize_passes(target))
    ]
    passes = cuda.library_dispatch_passes(target) + legalize + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)
    return tvm.transform.Sequential(passes)  # tvm.compile runs it under `with target`
