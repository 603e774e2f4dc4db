"""The one averaging rule every strategy uses, so they differ only in what they send.

Each row (axis 0) of a parameter becomes the num_examples-weighted mean over the updates that sent
that row; a whole-tensor entry sends every row. Rows and parameters nobody sent keep their previous
global value: that is how FedSkel keeps filters outside every skeleton, and LG-FedAvg keeps local layers.

A server takes these numbers from devices it does not control, so `AggregationRules` bound what one
client can do, per run: a cap on the num_examples it may claim, a largest share of any row's weight,
a largest L2 norm of its change to the global model (update clipping), or robust rules that ignore
num_examples: the per-row coordinate-wise median or trimmed mean over the clients that sent the row
(the rules of Flower's FedMedian and FedTrimmedAvg, applied to skeleton rows). `check_upload` is what
an upload must satisfy before it is aggregated at all; the simulator and the Flower strategy both call it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedskel.fl.layout import ModelLayout, Params
from fedskel.fl.update import Update

RULES = ("mean", "median", "trimmed-mean")


@dataclass(frozen=True)
class AggregationRules:
    """How one round's uploads become the new global model; the defaults are plain FedAvg arithmetic.

    ``rule``: "mean" (weighted by num_examples), "median" or "trimmed-mean" (unweighted, per coordinate,
    over a row's senders; ``trim``: the fraction cut at each end, floor(trim * senders) values).
    ``max_examples``: a claimed num_examples above it counts as this. ``max_share``: no client's weight
    in a row above this fraction of the row's total (1 / senders when that is more). ``clip_norm``: an
    update whose change to the global model has a larger L2 norm is scaled down to it.
    """

    rule: str = "mean"
    trim: float = 0.2
    max_examples: int | None = None
    max_share: float | None = None
    clip_norm: float | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"aggregation rule must be one of {list(RULES)}, got {self.rule!r}")
        if not (isinstance(self.trim, (int, float)) and 0 <= self.trim < 0.5):
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim!r}")
        if self.max_examples is not None and not (isinstance(self.max_examples, int) and self.max_examples >= 1):
            raise ValueError(f"max_examples must be an integer >= 1, got {self.max_examples!r}")
        if self.max_share is not None and not (isinstance(self.max_share, (int, float)) and 0 < self.max_share <= 1):
            raise ValueError(f"max_share must be in (0, 1], got {self.max_share!r}")
        if self.clip_norm is not None and not (isinstance(self.clip_norm, (int, float)) and math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be a finite number > 0, got {self.clip_norm!r}")


def aggregate(global_params: Params, updates: Sequence[Update], rules: AggregationRules | None = None) -> dict[str, np.ndarray]:
    """New global parameters; neither the inputs nor the updates are modified."""
    rules = rules or AggregationRules()
    _check_updates(global_params, updates)
    scales = _clip_scales(global_params, updates, rules.clip_norm)
    weights = np.array([u.num_examples if rules.max_examples is None else min(u.num_examples, rules.max_examples) for u in updates], np.float64)
    combine = _weighted_mean if rules.rule == "mean" else _robust
    new_params: dict[str, np.ndarray] = {}
    for name, current in global_params.items():
        current = np.asarray(current)
        base = current.reshape(1) if current.ndim == 0 else current
        senders = [(i, u.entries[name]) for i, u in enumerate(updates) if name in u.entries]
        rows = [np.arange(base.shape[0]) if entry.rows is None else entry.rows for _, entry in senders]
        values = [_moved(base, r, entry, scales[i]) for (i, entry), r in zip(senders, rows)]
        merged = base.copy()
        if senders:
            combined, covered = combine(base.shape, rows, values, weights[[i for i, _ in senders]], rules)
            merged[covered] = combined[covered]
        new_params[name] = merged.reshape(current.shape)
    return new_params


def check_upload(update: Update, layout: ModelLayout) -> None:
    """ValueError naming what makes an upload unusable: no examples, unknown names, wrong shapes, values
    that are not finite, or a CONV bias whose rows are not its weight's skeleton rows."""
    if update.num_examples < 1:
        raise ValueError(f"num_examples = {update.num_examples}: it cannot be weighted")
    for name, entry in update.entries.items():
        if name not in layout.shapes:
            raise ValueError(f"unknown parameter {name!r}")
        if entry.shape != layout.shapes[name]:
            raise ValueError(f"entry {name!r} has shape {entry.shape}, the model's is {layout.shapes[name]}")
        if not np.isfinite(entry.values).all():
            raise ValueError(f"entry {name!r} holds NaN or Inf")
    for conv in layout.conv_layers:
        if conv.bias is None:
            continue
        weight, bias = update.entries.get(conv.weight), update.entries.get(conv.bias)
        if (weight is None) != (bias is None):
            raise ValueError(f"CONV layer {conv.weight!r}: the upload has {'its weight' if bias is None else 'its bias'} without the other")
        if weight is None:
            continue
        if (weight.rows is None) != (bias.rows is None) or (weight.rows is not None and not np.array_equal(np.sort(weight.rows), np.sort(bias.rows))):
            raise ValueError(f"CONV layer {conv.weight!r}: bias rows {_rows(bias)} are not the weight's rows {_rows(weight)}")


def _rows(entry) -> str:
    return "all" if entry.rows is None else str(np.sort(entry.rows).tolist())


def _moved(base: np.ndarray, rows: np.ndarray, entry, scale: float) -> np.ndarray:
    """The sender's rows in float64, its change to the global rows scaled by ``scale`` (update clipping)."""
    values = entry.values.reshape(-1, *base.shape[1:]).astype(np.float64)
    return values if scale == 1.0 else base[rows] + scale * (values - base[rows])


def _weighted_mean(shape, rows, values, weights, rules):
    """(per-row weighted mean, rows someone sent); with ``max_share``, weights capped row by row."""
    row_weights = np.zeros((len(rows), shape[0]))  # senders x rows
    for slot, r in enumerate(rows):
        row_weights[slot, r] = weights[slot]
    if rules.max_share is not None:
        row_weights = _capped_shares(row_weights, rules.max_share)
    sums, total = np.zeros(shape), np.zeros(shape[0])
    for slot, (r, v) in enumerate(zip(rows, values)):
        w = row_weights[slot, r]
        np.add.at(sums, r, w.reshape(-1, *[1] * (len(shape) - 1)) * v)
        np.add.at(total, r, w)
    covered = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / total.reshape(-1, *[1] * (len(shape) - 1)), covered


def _capped_shares(row_weights, share):
    """Each row's weights, the largest lowered to a common cap so that none exceeds ``share`` of the row's
    new total (water-filling, exact); rows with the same senders and weights are solved once."""
    patterns, inverse = np.unique(row_weights, axis=1, return_inverse=True)
    capped = np.stack([_cap(patterns[:, p], share) for p in range(patterns.shape[1])], axis=1)
    return capped[:, inverse.reshape(-1)]


def _cap(weights, share):
    """``weights`` with the top k lowered to c = share * (rest + k c), the smallest k for which c is at
    least the (k+1)-th largest. With m senders and share * m <= 1 no cap can work: equal weights."""
    positive = weights > 0
    m = int(positive.sum())
    if m == 0 or share * m <= 1:
        return positive.astype(np.float64)
    order = np.sort(weights[positive])[::-1]
    for k in range(m):
        cap = share * order[k:].sum() / (1 - share * k)
        if order[k] <= cap:
            return np.minimum(weights, cap)
    raise AssertionError("unreachable: k = m - 1 satisfies the cap condition when share * m > 1")


def _robust(shape, rows, values, weights, rules):
    """(per-coordinate median or trimmed mean over each row's senders, unweighted; rows someone sent)."""
    stack = np.full((len(rows), *shape), np.nan)  # NaN: this sender did not send this row
    for slot, (r, v) in enumerate(zip(rows, values)):
        stack[slot, r] = v
    count = (~np.isnan(stack)).sum(axis=0)
    covered = count.reshape(shape[0], -1)[:, 0] > 0
    if rules.rule == "median":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": rows nobody sent, left out by `covered`
            return np.nanmedian(stack, axis=0), covered
    ordered = np.nan_to_num(np.sort(stack, axis=0), nan=0.0)  # NaNs sort last, then count nothing
    cumulative = np.concatenate([np.zeros((1, *shape)), np.cumsum(ordered, axis=0)], axis=0)
    cut = np.floor(rules.trim * count).astype(np.int64)  # Flower's FedTrimmedAvg: int(beta * n) from each end
    upper = np.take_along_axis(cumulative, (count - cut)[None], axis=0)[0]
    lower = np.take_along_axis(cumulative, cut[None], axis=0)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (upper - lower) / (count - 2 * cut), covered


def _clip_scales(global_params: Params, updates: Sequence[Update], clip_norm: float | None) -> list[float]:
    """Per update, the factor (<= 1) on its change to the global model that keeps the change's L2 norm within ``clip_norm``."""
    if clip_norm is None:
        return [1.0] * len(updates)
    scales = []
    for update in updates:
        squared = 0.0
        for name, entry in update.entries.items():
            current = np.asarray(global_params[name], dtype=np.float64)
            base = current.reshape(1) if current.ndim == 0 else current
            base = base if entry.rows is None else base[entry.rows]
            squared += float(np.sum((entry.values.astype(np.float64).reshape(base.shape) - base) ** 2))
        norm = math.sqrt(squared)
        scales.append(1.0 if norm <= clip_norm else clip_norm / norm)
    return scales


def _check_updates(global_params: Params, updates: Sequence[Update]) -> None:
    for i, update in enumerate(updates):
        if update.num_examples <= 0:
            raise ValueError(f"update {i} has num_examples={update.num_examples}; it cannot be weighted")
        for name, entry in update.entries.items():
            if name not in global_params:
                raise ValueError(f"update {i} sends unknown parameter {name!r}")
            if entry.shape != np.shape(global_params[name]):
                raise ValueError(
                    f"update {i} sends {name!r} as shape {entry.shape}, global is {np.shape(global_params[name])}"
                )
            if not np.isfinite(entry.values).all():
                raise ValueError(f"update {i} sends {name!r} with NaN or Inf")
