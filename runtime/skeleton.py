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
        if not np.issubdtype(idx.dtype, np.integer):
            raise SkeletonError(f"layer {name}: skeleton indices must be integers, got {idx.dtype}")
        bad = idx[(idx < 0) | (idx >= channels)]
        if bad.size:
            raise SkeletonError(f"layer {name}: index {int(bad[0])} out of range [0, {channels})")
        values, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise SkeletonError(f"layer {name}: index {int(values[counts > 1][0])} appears more than once")
        vectors.append(idx.astype(np.int64))
    return vectors


def top_k_skeleton(importance, conv_layers):
    """FedSkel's selection: per CONV layer the k channels of largest accumulated importance (sorted)."""
    skeleton = {}
    for layer in conv_layers:
        scores = np.asarray(importance[layer["weight"]], dtype=np.float64)
        # stable ordering: ties go to the lower channel index, so selection is deterministic
        order = np.lexsort((np.arange(scores.size), -scores))
        skeleton[layer["weight"]] = np.sort(order[: layer["k"]]).astype(np.int64)
    return skeleton
