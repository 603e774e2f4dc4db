"""The kernels of a training module as MetaSchedule tasks, ordered so the skeleton step gets tuned first."""

from dataclasses import dataclass

import tvm
from tvm import relax, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops

from ..targets.legalize import legalize_ops

SKELETON_FUNCTIONS = ("gradients_skel", "train_step_skel")
USES = ("skeleton", "shared", "full")  # kernels of the skeleton step only / of both steps / of the rest
SMALL_FLOP_SHARE = 0.01  # kernels under 1% of the largest one's FLOPs run in microseconds: tuned last


@dataclass
class Task:
    """One kernel to tune: its MetaSchedule task, where the training step uses it, and its FLOPs."""

    extracted: ms.ExtractedTask
    priority: int  # index into USES
    flop: float
    untunable: str  # why MetaSchedule leaves it alone ("" if it does not): index inputs, or hand-scheduled

    @property
    def tunable(self):
        return not self.untunable

    @property
    def name(self):
        return self.extracted.task_name

    @property
    def uses(self):
        return USES[self.priority]

    @property
    def workload(self):
        return self.extracted.dispatched[0]


def lower_for_tuning(module, target):
    """Legalize and fuse ``module`` into the PrimFuncs that get compiled: the one lowering tuning and build share.

    Records match kernels by their PrimFunc, name included (notes/tvm.md, trap 3), so tuning and the build
    must both see exactly these functions; their names come from this deterministic pass sequence, so they
    are stable across compiles of the same model, ratio and batch. ``AttachGlobalSymbol`` has to run before
    tuning or every candidate fails to build (trap 1).
    """
    passes = relax.pipeline.library_dispatch_passes(target) + [
        legalize_ops(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.AttachGlobalSymbol(),
    ]
    with target:
        return tvm.transform.Sequential(passes)(module)


def tuning_tasks(lowered, target):
    """Every kernel of ``lowered`` as a Task, in the order tuning budget goes to them.

    Kernels with real work first (at least SMALL_FLOP_SHARE of the largest kernel's FLOPs), small ones
    (reshapes, elementwise, tiny reductions) last; within each: the skeleton step's own kernels (the
    sliced CONV backward), then those it shares with the full step (forward, loss, SGD), then the full
    step's; the most FLOPs first.
    """
    functions = [gv.name_hint for gv, func in lowered.functions.items() if isinstance(func, relax.Function)]
    skeleton = _kernels_reached(lowered, [name for name in functions if name in SKELETON_FUNCTIONS])
    others = _kernels_reached(lowered, [name for name in functions if name not in SKELETON_FUNCTIONS])
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(lowered, target):
        name = extracted.task_name
        priority = 2 if name not in skeleton else 1 if name in others else 0
        workload = extracted.dispatched[0]
        tasks.append(Task(extracted, priority, estimate_tir_flops(workload), _untunable(workload)))
    small = SMALL_FLOP_SHARE * max((task.flop for task in tasks if task.tunable), default=0.0)
    return sorted(tasks, key=lambda task: (task.flop < small, task.priority, -task.flop, task.name))


def _kernels_reached(module, roots):
    """Names of the PrimFuncs the Relax functions ``roots`` call, directly or through other Relax functions."""
    kernels, seen, pending = set(), set(), list(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        callees = []
        relax.analysis.post_order_visit(
            module[name], lambda expr: callees.append(expr.name_hint) if isinstance(expr, tvm.ir.GlobalVar) else None
        )
        for callee in callees:
            if isinstance(module[callee], tirx.PrimFunc):
                kernels.add(callee)
            else:
                pending.append(callee)
    return kernels


def _untunable(workload):
    """Why a kernel is not tuned: the hand-scheduled CONV kernels (compiler/kernels) keep their schedule, and an
    integer tensor parameter (take, scatter_nd indices, nll_loss labels) indexes memory, which the runner's
    random inputs would read out of bounds."""
    main = workload["main"]
    if int(main.attrs.get("tirx.is_scheduled", 0)) if main.attrs else False:
        return "hand-scheduled"
    if any(str(arg.dtype).startswith(("int", "uint")) for arg in ms.arg_info.ArgInfo.from_prim_func(main)):
        return "index inputs"
    return ""
