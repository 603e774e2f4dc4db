"""Gradient rules of our own for Relax ops TVM 0.27 differentiates wrongly or not at all.

Importing the package registers every rule (each module calls ``register_gradient`` at level 20, above
TVM's level 10), so the training graph only needs ``from . import gradients``.
"""

from . import avg_pool2d, batch_norm, clip, concat, leaky_relu, max_pool2d, pad, relu, squeeze, strided_slice, take  # noqa: F401
