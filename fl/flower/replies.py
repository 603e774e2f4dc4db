"""What the server accepts from a node: replies are read here, on their RecordDict, and nothing in a
rejected one (ReplyError, with the reason) reaches aggregation or the reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from flwr.app import MetricRecord, RecordDict

from fedskel.fl.flower.records import METRICS, ReplyError, read_update
from fedskel.fl.layout import ModelLayout, Skeleton
from fedskel.fl.simulator import uploaded_skeleton
from fedskel.fl.update import Update
from fedskel.runtime.client import PHASES


@dataclass(frozen=True)
class Upload:
    """A train reply: the client's update, the skeleton it shows, and what the client measured."""

    partition: int
    partitions: int
    update: Update
    skeleton: Skeleton | None
    size: int  # bytes of the wire message
    loss: float
    step_ms: dict[str, list[float]]


@dataclass(frozen=True)
class Evaluation:
    """An evaluate reply; accuracies are None for a client without test samples."""

    partition: int
    partitions: int
    test_examples: int
    local_accuracy: float | None
    global_correct: int | None


def read_upload(content: RecordDict, layout: ModelLayout) -> Upload:
    update, size = read_update(content, layout)
    if update.num_examples < 1:
        raise ReplyError("the update has num_examples = 0: it cannot be weighted")
    try:
        skeleton = uploaded_skeleton(update, layout)
    except ValueError as err:
        raise ReplyError(f"its CONV rows are not a skeleton of this model: {err}") from None
    metrics = _metrics(content, ("loss", *(f"{phase}-ms" for phase in PHASES)))
    step_ms = {phase: [float(ms) for ms in _list(metrics[f"{phase}-ms"])] for phase in PHASES}
    return Upload(*_partition(metrics), update, skeleton, size, float(metrics["loss"]), step_ms)


def read_evaluation(content: RecordDict) -> Evaluation:
    metrics = _metrics(content, ("test-examples",))
    tested = int(metrics["test-examples"])
    if tested < 0:
        raise ReplyError(f"test-examples is {tested}")
    if not tested:
        return Evaluation(*_partition(metrics), 0, None, None)
    metrics = _metrics(content, ("test-examples", "local-accuracy", "global-correct"))
    local, correct = float(metrics["local-accuracy"]), int(metrics["global-correct"])
    if not (0 <= local <= 1 and 0 <= correct <= tested):
        raise ReplyError(f"accuracies out of range: local {local}, global {correct} of {tested} correct")
    return Evaluation(*_partition(metrics), tested, local, correct)


def _metrics(content: RecordDict, required: Iterable[str]) -> MetricRecord:
    metrics = content.metric_records.get(METRICS)
    missing = [key for key in ("partition-id", "num-partitions", *required) if metrics is None or key not in metrics]
    if missing:
        raise ReplyError(f"the reply's {METRICS!r} MetricRecord lacks {missing}")
    return metrics


def _partition(metrics: MetricRecord) -> tuple[int, int]:
    partition, partitions = int(metrics["partition-id"]), int(metrics["num-partitions"])
    if not 0 <= partition < partitions:
        raise ReplyError(f"partition-id {partition} outside [0, num-partitions={partitions})")
    return partition, partitions


def _list(value) -> list:
    if not isinstance(value, list):
        raise ReplyError(f"expected a list of step times, got {type(value).__name__}")
    return value
