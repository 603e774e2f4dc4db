"""Hand-scheduled NHWC CONV kernels (forward, dgrad, wgrad and their skeleton forms) and the pass that uses them.

TVM 0.27's CPU lowering of a CONV is an unscheduled loop nest: 20-60x slower than oneDNN.  These kernels
reach oneDNN's speed with no tuning (notes/perf.md): one TE definition per family, one schedule with a
register tile chosen per ISA (tiles.py).
"""

from .rewrite import UseConvKernels, conv_kind

__all__ = ["UseConvKernels", "conv_kind"]
