"""Accuracy of a compiled model on a data set of any size.

The compiled batch is fixed, so the last partial batch is padded with zeros and the padded rows'
predictions are dropped; inference-mode forward treats samples independently, so padding changes nothing.
"""

import numpy as np


def _predicted_labels(trainer, x):
    """Predicted class of every sample in ``x`` (the model's dtype, N x the compiled sample shape)."""
    x = np.asarray(x)
    batch, sample_shape = trainer.input_shape[0], trainer.input_shape[1:]
    if x.ndim != len(trainer.input_shape) or x.shape[1:] != sample_shape:
        raise ValueError(f"samples of shape {x.shape[1:]} do not match the compiled {sample_shape}")
    labels = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        padded = np.zeros((batch, *sample_shape), dtype=x.dtype)
        padded[: len(chunk)] = chunk
        labels.append(trainer.predict(padded)[: len(chunk)].argmax(axis=1))
    return np.concatenate(labels)


def accuracy(trainer, x, y):
    """Fraction of ``x`` classified as ``y``; an empty set has no accuracy and is an error."""
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((_predicted_labels(trainer, x) == y).mean())
