"""The value a float32 ONNX attribute stands for.

ONNX float attributes are 32-bit: torch's HardSigmoid slope 1/6 arrives as 0.16666667163, a Dropout
ratio of 0.3 as 0.30000001192, BatchNorm's epsilon 1e-5 as 9.99999975e-06.  A float64 model computing
with those is up to 1e-8 from torch, which uses the values as written.  A value is taken as the fraction
with a small denominator whose float32 rounding it is, else as the shortest decimal that rounds to it
(numpy's repr of a float32).
"""

from fractions import Fraction

import numpy as np


def intended_value(value):
    """The fraction (denominator <= 1000), else the shortest decimal, whose float32 rounding ``value`` is."""
    fraction = Fraction(float(value)).limit_denominator(1000)
    if np.float32(fraction) == np.float32(value):
        return float(fraction)
    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))
