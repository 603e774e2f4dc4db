"""The unit of federated traffic: some parameters, whole or as rows of axis 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedskel.runtime.skeleton import checked_indices


@dataclass(frozen=True, init=False)
class Entry:
    """One parameter in a message: the whole tensor, or the given rows of axis 0.

    `shape` is the full tensor's shape; it is required with `rows`, because the
    sliced values alone do not tell how many rows the tensor has. Values are
    copied to float32 so a message is a snapshot the sender can no longer change.
    """

    values: np.ndarray
    rows: np.ndarray | None
    shape: tuple[int, ...]

    def __init__(self, values: np.ndarray, rows: np.ndarray | None = None, shape: tuple[int, ...] | None = None):
        values = np.array(values, dtype=np.float32)
        if rows is None:
            full_shape = values.shape if shape is None else tuple(int(d) for d in shape)
            if values.shape != full_shape:
                raise ValueError(f"whole-tensor entry has values of shape {values.shape}, expected {full_shape}")
        else:
            if shape is None:
                raise ValueError("an entry with rows needs the full tensor shape")
            full_shape = tuple(int(d) for d in shape)
            if not full_shape:
                raise ValueError("a scalar parameter has no rows to slice")
            rows = checked_indices(rows, full_shape[0], "row")
            expected = (len(rows), *full_shape[1:])
            if values.shape != expected:
                raise ValueError(f"{len(rows)} rows of a {full_shape} tensor need values of shape {expected}, got {values.shape}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "shape", full_shape)


@dataclass(frozen=True)
class Update:
    """What one client uploads, or what the server sends a client.

    `num_examples` weights the client's contribution in aggregation; a server
    message carries 0.
    """

    entries: Mapping[str, Entry]
    num_examples: int

    def __post_init__(self) -> None:
        if int(self.num_examples) != self.num_examples or self.num_examples < 0:
            raise ValueError(f"num_examples must be a non-negative integer, got {self.num_examples!r}")
        for name, entry in self.entries.items():
            if not isinstance(entry, Entry):
                raise TypeError(f"entry {name!r} is a {type(entry).__name__}, not an Entry")
        object.__setattr__(self, "entries", dict(self.entries))
        object.__setattr__(self, "num_examples", int(self.num_examples))
