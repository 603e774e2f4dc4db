"""Split a labelled data set among simulated clients, reproducibly.

Partitioning is delegated to flwr-datasets so the splits match what the Flower
community calls shards / Dirichlet / IID; this module only feeds it labels and
returns plain index arrays. Everything is seeded: same arguments, same split.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

SCHEMES = ("shards", "dirichlet", "iid")


def partition(labels: np.ndarray, num_clients: int, scheme: str, seed: int, **opts: Any) -> list[np.ndarray]:
    """Sorted int64 sample indices for each client.

    shards:    each client gets `num_classes_per_partition` (default 2) classes,
               assigned deterministically (client i: classes i, i+1, ...); a class
               nobody is assigned (too few clients) is left out.
    dirichlet: class proportions drawn from Dir(`alpha`) (required);
               `min_partition_size` and `self_balancing` pass through.
    iid:       equal parts of a seeded shuffle.
    """
    labels = _checked_labels(labels)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; available: {list(SCHEMES)}")
    if not 1 <= num_clients <= len(labels):
        raise ValueError(f"num_clients={num_clients} must be in [1, {len(labels)}] (the number of samples)")
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # partitioning must never reach the Hub
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    # A seeded shuffle first: it decides which samples of a class each client gets
    # (the partitioners split in data set order), and makes IID parts random.
    order = np.random.default_rng(seed).permutation(len(labels))
    if scheme == "shards":
        _reject_unknown(opts, {"num_classes_per_partition"}, scheme)
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=opts.get("num_classes_per_partition", 2),
            class_assignment_mode="deterministic",
            seed=seed,
        )
    elif scheme == "dirichlet":
        _reject_unknown(opts, {"alpha", "min_partition_size", "self_balancing"}, scheme)
        if "alpha" not in opts:
            raise ValueError("dirichlet partitioning needs alpha")
        partitioner = DirichletPartitioner(num_partitions=num_clients, partition_by="label", seed=seed, **opts)
    else:
        _reject_unknown(opts, set(), scheme)
        partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = _labels_dataset(labels[order], order)
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)) for i in range(num_clients)]


def local_test_split(
    test_labels: np.ndarray, client_train_labels: Sequence[np.ndarray], seed: int
) -> list[np.ndarray]:
    """Each client's test indices: test samples of the classes it trains on (LG-FedAvg protocol).

    A class's test samples are shuffled (seeded) and divided disjointly among the
    clients that train on it, in proportion to how many training samples of it
    each holds, so a client's test distribution mirrors its training one. Classes
    no client trains on are left out.
    """
    test_labels = _checked_labels(test_labels)
    train_counts = [np.bincount(_checked_labels(y)) for y in client_train_labels]
    rng = np.random.default_rng(seed)
    assigned: list[list[np.ndarray]] = [[] for _ in client_train_labels]
    for cls in np.unique(test_labels):
        holders = np.array([counts[cls] if cls < len(counts) else 0 for counts in train_counts], dtype=np.int64)
        if holders.sum() == 0:
            continue
        samples = rng.permutation(np.flatnonzero(test_labels == cls))
        bounds = np.concatenate([[0], np.cumsum(_proportional_counts(len(samples), holders))])
        for client, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            assigned[client].append(samples[start:stop])
    return [np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for parts in assigned]


def _proportional_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to `total`, proportional to weights (largest remainder)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    leftover = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return counts


def _checked_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, found {labels.min()}")
    return labels.astype(np.int64)


def _reject_unknown(opts: dict[str, Any], allowed: set[str], scheme: str) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"partition scheme {scheme!r} takes no options {unknown}; it accepts {sorted(allowed)}")


def _labels_dataset(labels: np.ndarray, index: np.ndarray):
    """A labels-only datasets.Dataset; `index` carries each row's position in the caller's array."""
    import datasets

    features = datasets.Features(
        {"index": datasets.Value("int64"), "label": datasets.ClassLabel(num_classes=int(labels.max()) + 1)}
    )
    return datasets.Dataset.from_dict({"index": index, "label": labels}, features=features)
