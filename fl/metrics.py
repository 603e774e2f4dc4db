"""What a user decides on besides the final round: best accuracy, time to a target accuracy, spread over seeds.

Time to a target is counted until accuracy *stays* at or above it (a curve that touches 95% once and falls
back has not reached it), in rounds and in the client compute spent until then: the summed wall seconds of
every client's local steps (what FedSkel's cheaper steps save, and its slower convergence costs back).
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

TARGETS = (0.9, 0.95)


def rounds_to_target(accuracies: Sequence[float | None], target: float) -> int | None:
    """The first round (1-based) from which every round's accuracy is >= target; None if the run never gets there."""
    reached = None
    for number, value in enumerate(accuracies, start=1):
        if value is None or value < target:
            reached = None
        elif reached is None:
            reached = number
    return reached


def client_seconds_per_round(timings: Sequence[dict]) -> list[float]:
    """Summed wall seconds of every local step of every client, per round."""
    return [sum(sum(ms) for ms in t["step_ms"].values()) / 1e3 for t in timings]


def targets_summary(accuracies: Sequence[float | None], round_seconds: Sequence[float]) -> tuple[dict, dict]:
    """({target: rounds}, {target: client seconds}) for every target in TARGETS, keyed by "0.95" etc."""
    rounds, seconds = {}, {}
    for target in TARGETS:
        reached = rounds_to_target(accuracies, target)
        rounds[f"{target:g}"] = reached
        seconds[f"{target:g}"] = None if reached is None else float(sum(round_seconds[:reached]))
    return rounds, seconds


def seed_group_key(report: dict) -> str:
    """Runs equal in everything but the seed belong together (their mean and spread are one result)."""
    config = {k: v for k, v in report["config"].items() if k != "seed"}
    settings = {k: v for k, v in report["settings"].items() if k != "seed"}
    return json.dumps([config, settings], sort_keys=True)


def group_by_settings(names: Sequence[str], reports: Sequence[dict]) -> list[tuple[list[str], list[dict]]]:
    """[(names, reports)] of runs that differ only by seed, in first-seen order."""
    groups: dict[str, tuple[list[str], list[dict]]] = {}
    for name, report in zip(names, reports):
        members = groups.setdefault(seed_group_key(report), ([], []))
        members[0].append(name)
        members[1].append(report)
    return list(groups.values())


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, how many) of the values that are not None."""
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None, None, 0
    std = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return float(np.mean(present)), std, len(present)
