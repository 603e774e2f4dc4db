"""Offline MetaSchedule tuning of a training module, and applying its records when the module is built.

Untuned CPU kernels are naive loop nests (15-100x slower than PyTorch, notes/tvm.md): tuning is what makes
the compiled training step fast. It is done once per model, ratio, batch and target on a workstation
(timing on the device over TVM RPC where the device is not this machine), then reused by every
``fedskel-compile --tuning-db``.
"""

import logging
import socket
import sys

import tvm
from tvm import relax, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.utils import fork_seed

from fedskel.targets import TargetError

from .build import resolve_linker
from .errors import CompileError
from .tuning_builder import candidate_builder
from .tuning_db import database_sha256, has_records, open_database
from .tuning_progress import ProgressCallback, print_table, task_rows
from .tuning_tasks import lower_for_tuning, tuning_tasks

DEFAULT_TRIALS_PER_ITER = 8
DEFAULT_SKELETON_WEIGHT = 4.0
DEFAULT_RPC_TIMEOUT_S = 60
DEFAULT_COMMIT_EVERY = 16  # kernels per MetaSchedule run: its records reach the database when the run ends
OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves such a kernel alone


def tune(module, target_spec, db_dir, trials, resume=False, rpc=None, rpc_key=None, seed=0, out=None,
         commit_every=DEFAULT_COMMIT_EVERY):
    """Tune the kernels of the training ``module`` for ``target_spec`` into the database ``db_dir``.

    Where the budget goes: ``tuning_tasks`` orders the kernels (sizeable ones first; among them the sliced
    CONV backward of ``gradients_skel``/``train_step_skel``, then what the skeleton step shares with the
    full one, then the full step's own). MetaSchedule's gradient task scheduler starts with one round-robin
    pass, ``trials_per_iter`` trials per kernel in that order, so only the first ``trials / trials_per_iter``
    kernels can get any: just those are handed to it (saving each of the others its setup and a workload in
    the database). A budget smaller than the pass thus tunes the skeleton step's kernels first. A budget
    beyond it goes, after the pass, to the kernel whose weighted latency should fall most; kernels the
    skeleton step runs weigh ``skeleton_weight`` times their call count (UpdateSkel runs far more steps
    than SetSkel).

    MetaSchedule commits a run's records only after its first pass over all its kernels (resnet18's
    80-kernel pass took an hour here): the queue is therefore tuned ``commit_every`` kernels at a time, each
    group with its share of the budget, so a run that is stopped loses at most the group in progress and
    ``--resume`` picks up from there.

    ``trials`` is this run's budget. With ``resume`` the database is kept and extended, kernels without
    records going first (an untuned kernel is 10-100x slower, more trials on a tuned one gain less), and
    its records warm up the cost model; without it a non-empty ``db_dir`` is an error, so records never mix
    by accident. ``rpc`` ("host:port" of a TVM RPC tracker) with ``rpc_key`` times candidates on a device
    registered there (``python -m tvm.exec.rpc_server --tracker host:port --key KEY``). Kernels with index
    inputs are left out: the runner feeds random data, and random indices read out of bounds.
    Prints a row per tuning round and a per-kernel table at the end; returns the table's rows.
    """
    out = out or sys.stdout
    if trials < 1 or commit_every < 1:
        raise CompileError(f"trials and commit_every must be >= 1, got {trials} and {commit_every}")
    if has_records(db_dir) and not resume:
        raise CompileError(f"tuning database {db_dir} already has records: resume it (--resume) or pick a new directory")
    target = _tvm_target(target_spec)
    linker = resolve_linker(target_spec)
    settings = target_spec.tuning
    trials_per_iter = settings.get("trials_per_iter", DEFAULT_TRIALS_PER_ITER)
    skeleton_weight = settings.get("skeleton_weight", DEFAULT_SKELETON_WEIGHT)
    rpc_config = _rpc_config(rpc, rpc_key, settings.get("rpc_timeout_s", DEFAULT_RPC_TIMEOUT_S))
    database = open_database(db_dir, create=True)
    tasks = tuning_tasks(lower_for_tuning(module, target), target)
    recorded = {row["kernel"]: row["trials"] for row in task_rows(tasks, database)}
    queue = sorted((task for task in tasks if task.tunable), key=lambda task: recorded[task.name] > 0)
    queue = queue[: -(-trials // trials_per_iter)]
    print(f"tuning {len(queue)} of {len(tasks)} kernels for {target_spec.name}, {trials} trials, into {db_dir}", file=out)
    _quiet_metaschedule_console()
    rand_states = fork_seed(seed, n=len(queue))
    groups = [range(start, min(start + commit_every, len(queue))) for start in range(0, len(queue), commit_every)]
    runner = _runner(rpc_config)
    try:
        for group in groups:
            # the group's share of the budget: trials * (kernels so far) / (all kernels), rounded down
            share = trials * group.stop // len(queue) - trials * group.start // len(queue)
            _tune_group([queue[i] for i in group], [rand_states[i] for i in group], share, tasks, target, linker,
                        trials_per_iter, skeleton_weight, runner, database, db_dir, out)
    finally:
        runner.pool.shutdown()  # its worker processes are otherwise left running after this process exits
    rows = task_rows(tasks, database)
    print_table(rows, out)
    return rows


def _tune_group(queue, rand_states, trials, tasks, target, linker, trials_per_iter, skeleton_weight, runner,
                database, db_dir, out):
    """One MetaSchedule run over the kernels ``queue``; its records are in ``database`` when it returns."""
    contexts = [
        ms.TuneContext(mod=task.workload, target=target, space_generator="post-order-apply",
                       search_strategy=_search_strategy(trials_per_iter), task_name=task.name,
                       rand_state=rand_state, num_threads="physical").clone()
        for task, rand_state in zip(queue, rand_states)
    ]
    ms.tune_tasks(
        tasks=contexts,
        task_weights=[task.extracted.weight * (skeleton_weight if task.priority < 2 else 1.0) for task in queue],
        work_dir=db_dir,
        max_trials_global=trials,
        num_trials_per_iter=trials_per_iter,
        builder=candidate_builder(linker),
        runner=runner,
        database=database,
        measure_callbacks=ms.MeasureCallback.create("default") + [ProgressCallback([(tasks.index(task), task) for task in queue], out)],
        task_scheduler="gradient",
    )


def apply_database(module, target_spec, db_dir):
    """``module`` lowered, with the database's best schedules applied, and what the manifest says about it.

    Returns ``(module, {"database_sha256", "tuned_tasks", "total_tasks"})``; kernels without a record keep
    TVM's default lowering, and a database matching no kernel at all is refused (a mismatch, not a choice). The pass reads target and database from the context, hence the ``with``
    (``compile_relax`` did not apply the records, notes/tvm.md trap 2). Tuned kernels come out marked
    opaque: the build runs fusion again, and FuseOps re-wraps multi-output kernels (the SGD momentum
    updates) under a new name each time it runs, which would drop their schedules.
    """
    database = open_database(db_dir)
    target = _tvm_target(target_spec)
    lowered = lower_for_tuning(module, target)
    with target, database, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase()(lowered)
    hand_scheduled = {gv.name_hint for gv, func in lowered.functions.items() if _is_scheduled(func)}
    kernels = {gv: func for gv, func in applied.functions.items()
               if isinstance(func, tirx.PrimFunc) and gv.name_hint not in hand_scheduled}
    tuned = {gv: func.with_attr("op_pattern", OPAQUE) for gv, func in kernels.items() if _is_scheduled(func)}
    if not tuned:
        raise CompileError(f"tuning database {db_dir} has no record for any kernel of this model: it was tuned for "
                           f"another model, ratio, batch size or target (tune with the options you compile with)")
    applied = tvm.IRModule({**dict(applied.functions.items()), **tuned}, attrs=applied.attrs)
    return applied, {"database_sha256": database_sha256(db_dir), "tuned_tasks": len(tuned), "total_tasks": len(kernels)}


def _is_scheduled(func):
    return isinstance(func, tirx.PrimFunc) and func.attrs is not None and int(func.attrs.get("tirx.is_scheduled", 0))


def _search_strategy(trials_per_iter):
    """Evolutionary search keeping MetaSchedule's population-to-round ratio (512 for 64 trials) for smaller rounds.

    With the default 512, two 8-trial rounds of one CONV took 106 s here; with 64, 49 s and as fast a kernel.
    """
    population = 8 * trials_per_iter
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(50, population))


def _rpc_config(rpc, rpc_key, timeout_s):
    """The RPC runner's settings, once the tracker answers and knows a device under ``rpc_key``; None for local runs."""
    if rpc is None:
        return None
    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit() or not rpc_key:
        raise CompileError(f"RPC tuning needs the tracker as host:port and a device key, got {rpc!r} and key {rpc_key!r}")
    try:  # TVM's own check retries for a minute before saying the tracker is not there
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise CompileError(f"RPC tracker {rpc}: cannot connect ({exc.strerror or exc}); start one with "
                           f"python -m tvm.exec.rpc_tracker --port {port}") from None
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key, session_timeout_sec=timeout_s)
    try:
        config.count_num_servers(allow_missing=False)
    except (RuntimeError, ValueError) as exc:
        raise CompileError(f"RPC tracker {rpc}: {str(exc).strip().splitlines()[0]}") from None
    return config


def _runner(rpc_config):
    """MetaSchedule's local runner, or its RPC runner with one worker per device the tracker knows."""
    if rpc_config is None:
        return ms.runner.LocalRunner()
    return ms.runner.RPCRunner(rpc_config=rpc_config, max_workers=rpc_config.count_num_servers())


def _quiet_metaschedule_console():
    """MetaSchedule logs a table of every kernel after every round: warnings only, unless configured otherwise
    (ProgressCallback prints one row a round instead, with the first error of a round that failed)."""
    metaschedule = logging.getLogger("tvm.s_tir.meta_schedule")
    if metaschedule.level == logging.NOTSET:
        metaschedule.setLevel(logging.WARNING)


def _tvm_target(target_spec):
    try:
        return target_spec.tvm()
    except TargetError as exc:
        raise CompileError(str(exc)) from None
