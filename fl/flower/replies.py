"""What the server accepts from a node: replies are read here, on their RecordDict, and nothing in a
rejected one (ReplyError, with the reason) reaches aggregation or the reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from flwr.app import MetricRecord, RecordDict

from fedskel.fl.aggregation import check_upload
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


MAX_PARTITIONS = 10**6
MAX_STEP_TIMES = 10**6  # step times one reply may list per phase


def read_upload(content: RecordDict, layout: ModelLayout) -> Upload:
    update, size = read_update(content, layout)
    try:
        check_upload(update, layout)
    except ValueError as err:
        raise ReplyError(f"the update cannot be aggregated: {err}") from None
    try:
        skeleton = uploaded_skeleton(update, layout)
    except ValueError as err:
        raise ReplyError(f"its CONV rows are not a skeleton of this model: {err}") from None
    metrics = _metrics(content, ("loss", *(f"{phase}-ms" for phase in PHASES)))
    step_ms = {phase: _numbers(metrics, f"{phase}-ms") for phase in PHASES}
    return Upload(*_partition(metrics), update, skeleton, size, _number(metrics, "loss", 0.0, math.inf), step_ms)


def read_evaluation(content: RecordDict) -> Evaluation:
    metrics = _metrics(content, ("test-examples",))
    tested = _integer(metrics, "test-examples", 0, 2**53)
    if not tested:
        return Evaluation(*_partition(metrics), 0, None, None)
    metrics = _metrics(content, ("test-examples", "local-accuracy", "global-correct"))
    local, correct = _number(metrics, "local-accuracy", 0.0, 1.0), _integer(metrics, "global-correct", 0, tested)
    return Evaluation(*_partition(metrics), tested, local, correct)


def _metrics(content: RecordDict, required: Iterable[str]) -> MetricRecord:
    metrics = content.metric_records.get(METRICS)
    missing = [key for key in ("partition-id", "num-partitions", *required) if metrics is None or key not in metrics]
    if missing:
        raise ReplyError(f"the reply's {METRICS!r} MetricRecord lacks {missing}")
    return metrics


def _partition(metrics: MetricRecord) -> tuple[int, int]:
    partitions = _integer(metrics, "num-partitions", 1, MAX_PARTITIONS)
    partition = _integer(metrics, "partition-id", 0, MAX_PARTITIONS)
    if not partition < partitions:
        raise ReplyError(f"partition-id {partition} outside [0, num-partitions={partitions})")
    return partition, partitions


def _integer(metrics: MetricRecord, key: str, low: int, high: int) -> int:
    value = metrics[key]
    if type(value) is not int:  # a float, NaN, bool or list is not a count
        raise ReplyError(f"metric {key!r} must be an integer, got {type(value).__name__} {str(value)[:40]}")
    if not low <= value <= high:
        raise ReplyError(f"metric {key!r} = {value} outside [{low}, {high}]")
    return value


def _number(metrics: MetricRecord, key: str, low: float, high: float) -> float:
    value = metrics[key]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ReplyError(f"metric {key!r} must be a finite number, got {type(value).__name__} {str(value)[:40]}")
    if not low <= value <= high:
        raise ReplyError(f"metric {key!r} = {value} outside [{low}, {high}]")
    return float(value)


def _numbers(metrics: MetricRecord, key: str) -> list[float]:
    """A list of finite non-negative numbers (step times in ms), of bounded length."""
    value = metrics[key]
    if not isinstance(value, list):
        raise ReplyError(f"metric {key!r} must be a list of step times, got {type(value).__name__}")
    if len(value) > MAX_STEP_TIMES:
        raise ReplyError(f"metric {key!r} lists {len(value)} step times, at most {MAX_STEP_TIMES}")
    if not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in value):
        raise ReplyError(f"metric {key!r} holds a step time that is not a finite number >= 0")
    return [float(v) for v in value]
