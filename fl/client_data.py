"""Each simulated client's own training set and local test split, cut from one data set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedskel.fl.data import Dataset
from fedskel.fl.partition import local_test_split, partition


@dataclass(frozen=True)
class ClientData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def split_among_clients(dataset: Dataset, num_clients: int, scheme: str, seed: int, **opts: Any) -> list[ClientData]:
    """Partition the training set (fl.partition) and give each client test samples of its own classes."""
    parts = partition(dataset.y_train, num_clients, scheme, seed, **opts)
    tests = local_test_split(dataset.y_test, [dataset.y_train[p] for p in parts], seed)
    return [
        ClientData(dataset.x_train[train], dataset.y_train[train], dataset.x_test[test], dataset.y_test[test])
        for train, test in zip(parts, tests)
    ]
