"""The value a float32 ONNX attribute stands for.

ONNX float attributes are 32-bit: torch's HardSigmoid slope 1/6 arrives as 0.16666667163, a Dropout
ratio of 0.3 as 0.30000001192.  A float64 model computing with those is 2e-8 from torch, which uses the
exact values.  A value that is the float32 rounding of a fraction with a small denominator is taken as
that fraction.
"""

from fractions import Fraction

import numpy as np


def intended_value(value):
    """The fraction (denominator <= 1000) whose float32 rounding ``value`` is, or ``value`` itself."""
    fraction = Fraction(float(value)).limit_denominator(1000)
    return float(fraction) if np.float32(fraction) == np.float32(value) else float(value)
