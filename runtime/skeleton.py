"""Skeletons: choosing them from the importance metric and checking them before they reach a kernel.

TVM's ``take`` is compiled in fast mode and reads out of bounds on a bad index, so every index vector is
validated here (length k, integer, in range, no duplicates) before any compiled function sees it.
"""

import numpy as np


class SkeletonError(ValueError):
    """A skeleton that does not fit the compiled model; the message names the layer and the index."""


def validate_skeleton(skeleton, conv_layers):
    """Index vectors (int64) in the compiled layer order, or SkeletonError."""
    known = {layer["weight"]: layer for layer in conv_layers}
    unknown = sorted(set(skeleton) - set(known))
    if unknown:
        raise SkeletonError(f"skeleton names unknown CONV layers {unknown}; CONV layers: {list(known)}")
    vectors = []
    for layer in conv_layers:
        name, k, channels = layer["weight"], layer["k"], layer["out_channels"]
        if name not in skeleton:
            raise SkeletonError(f"skeleton has no indices for CONV layer {name}")
        idx = np.asarray(skeleton[name])
        if idx.ndim != 1 or idx.shape[0] != k:
            raise SkeletonError(f"layer {name}: skeleton must be a vector of k={k} indices, got shape {idx.shape}")
        vectors.append(checked_indices(idx, channels, f"layer {name}: skeleton", SkeletonError))
    return vectors


def checked_indices(indices, size, what, error=ValueError):
    """``indices`` as int64 if they are distinct integers in [0, size), else ``error`` naming the first bad one.

    The one check for every index vector that reaches a kernel (skeletons) or the aggregation (rows of a
    sliced update): an out-of-range index reads out of bounds in ``take``, a repeated one counts twice.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise error(f"{what} indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
    if indices.size == 0:
        raise error(f"{what} indices are empty")
    bad = indices[(indices < 0) | (indices >= size)]
    if bad.size:
        raise error(f"{what} index {int(bad[0])} out of range [0, {size})")
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise error(f"{what} index {int(values[counts > 1][0])} appears more than once")
    return indices.astype(np.int64)


def top_k_skeleton(importance, conv_layers):
    """FedSkel's selection: per CONV layer the k channels of largest accumulated importance (sorted)."""
    skeleton = {}
    for layer in conv_layers:
        scores = np.asarray(importance[layer["weight"]], dtype=np.float64)
        # stable ordering: ties go to the lower channel index, so selection is deterministic
        order = np.lexsort((np.arange(scores.size), -scores))
        skeleton[layer["weight"]] = np.sort(order[: layer["k"]]).astype(np.int64)
    return skeleton
