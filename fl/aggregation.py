"""The one averaging rule every strategy uses, so they differ only in what they send.

Each row (axis 0) of a parameter becomes the num_examples-weighted mean over the
updates that sent that row; a whole-tensor entry sends every row. Rows and
parameters nobody sent keep their previous global value: that is how FedSkel
keeps filters outside every skeleton, and LG-FedAvg keeps local layers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedskel.fl.layout import Params
from fedskel.fl.update import Update


def aggregate(global_params: Params, updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """New global parameters; neither the inputs nor the updates are modified."""
    _check_updates(global_params, updates)
    new_params: dict[str, np.ndarray] = {}
    for name, current in global_params.items():
        current = np.asarray(current)
        rows_view = current.reshape(1) if current.ndim == 0 else current
        sums = np.zeros(rows_view.shape, dtype=np.float64)
        weights = np.zeros(rows_view.shape[0], dtype=np.float64)
        for update in updates:
            entry = update.entries.get(name)
            if entry is None:
                continue
            values = entry.values.reshape(-1, *rows_view.shape[1:])
            rows = np.arange(rows_view.shape[0]) if entry.rows is None else entry.rows
            np.add.at(sums, rows, update.num_examples * values.astype(np.float64))
            np.add.at(weights, rows, float(update.num_examples))
        merged = rows_view.copy()
        sent = weights > 0
        merged[sent] = sums[sent] / weights[sent].reshape(-1, *([1] * (sums.ndim - 1)))
        new_params[name] = merged.reshape(current.shape)
    return new_params


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
