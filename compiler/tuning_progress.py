"""What a tuning run reports: one row per tuning round as it goes, one table per kernel at the end.

MetaSchedule logs a table of every kernel after every round (hundreds of lines a minute); a user watching a
long run wants the current kernel, its trials, best latency and GFLOPS. They come from the runner's results
during the run, and from the database at the end (so a resumed run's table counts the earlier runs' records).
"""

import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

FAILED_RUN_SECS = 1e9  # MetaSchedule records a failed run with a huge latency rather than none

HEADER = f"{'#':>3} {'kernel':44s} {'uses':8s} {'trials':>6s} {'best ms':>10s} {'GFLOPS':>8s}  note"


def format_row(index, name, uses, trials, best_s, flop, note=""):
    best = f"{best_s * 1e3:10.4f}" if best_s is not None else f"{'-':>10s}"
    gflops = f"{flop / best_s / 1e9:8.2f}" if best_s else f"{'-':>8s}"
    return f"{index:>3} {name[:44]:44s} {uses:8s} {trials:>6d} {best} {gflops}  {note}".rstrip()


@derived_object
class ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """After each round of measurements, prints that kernel's trials and best time so far in this run."""

    def __init__(self, numbered_tasks, out):
        """``numbered_tasks``: (row number in the final table, Task) for each task given to MetaSchedule, in order."""
        super().__init__()
        self.numbered_tasks = numbered_tasks
        self.out = out
        self.trials = [0] * len(numbered_tasks)
        self.best = [None] * len(numbered_tasks)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        errors = []
        for built, ran in zip(builder_results, runner_results):
            self.trials[task_id] += 1
            seconds = _mean_seconds(ran.run_secs) if built.error_msg is None and ran.error_msg is None else None
            if seconds is None:
                errors.append(built.error_msg or ran.error_msg or "no time")
            elif self.best[task_id] is None or seconds < self.best[task_id]:
                self.best[task_id] = seconds
        number, task = self.numbered_tasks[task_id]
        note = f"{len(errors)} of {len(runner_results)} failed: {_last_line(errors[0])}" if errors else ""
        print(format_row(number, task.name, task.uses, self.trials[task_id], self.best[task_id], task.flop, note),
              file=self.out, flush=True)


def task_rows(tasks, database):
    """Per kernel, tuned or not: trials recorded in ``database`` and the best latency among them."""
    times = {}
    for record in database.get_all_tuning_records():
        times.setdefault(tvm_ffi.structural_hash(record.workload.mod), []).append(_mean_seconds(record.run_secs))
    rows = []
    for task in tasks:
        recorded = times.get(tvm_ffi.structural_hash(task.workload), [])
        valid = [seconds for seconds in recorded if seconds is not None]
        note = f"not tuned: {task.untunable}" if not task.tunable else "every trial failed" if recorded and not valid else ""
        rows.append({"kernel": task.name, "uses": task.uses, "trials": len(recorded),
                     "best_s": min(valid) if valid else None, "flop": task.flop, "note": note})
    return rows


def print_table(rows, out):
    print(HEADER, file=out)
    for index, row in enumerate(rows):
        print(format_row(index, row["kernel"], row["uses"], row["trials"], row["best_s"], row["flop"], row["note"]), file=out)
    tuned = sum(1 for row in rows if row["best_s"] is not None)
    print(f"{tuned} of {len(rows)} kernels have a tuned schedule", file=out, flush=True)


def _last_line(message):
    lines = [line for line in str(message).splitlines() if line.strip()]
    return lines[-1][:120] if lines else "?"


def _mean_seconds(run_secs):
    if not run_secs:
        return None
    seconds = sum(float(s) for s in run_secs) / len(run_secs)
    return None if seconds >= FAILED_RUN_SECS else seconds
