"""Stride-S dgrad split by output phase: S x S stride-1 CONVs over dY, no zero-dilation.

dX[i] = sum_r dY[(i + pad - r) / S] W[r] takes only the taps r with (i + pad - r) divisible by S.  For
the output rows of one phase, i = a + S*m, those are r = r0 + S*u (r0 = (a + pad) mod S), and
(i + pad - r) / S = m + q0 - u with q0 = (a + pad - r0) / S: a stride-1 CONV over dY with ceil((K - r0)/S)
taps, rotated.  Zero-dilating dY instead runs all K taps over S x S as many positions (4x the FLOPs at
stride 2).  Dilation 1 only (rewrite.py keeps zero-dilation for dilated strided CONVs).
"""

from dataclasses import dataclass

from tvm import te, tirx

from .layout import clamp
from .schedule import parallel_copy


@dataclass(frozen=True)
class Phase:
    offset: int  # a: the first output row (or column) of this phase
    size: int  # how many output rows it has: a, a + S, ... < the input size
    first_tap: int  # r0
    taps: int  # its taps r0, r0 + S, ... < K (0: these rows get no gradient)
    before: int  # dY rows to pad before row 0 so that output row m reads padded rows m .. m + taps - 1


def axis_phases(size, kernel, stride, pad):
    """The S phases of one spatial axis of a dgrad whose input (dX) axis is ``size`` long."""
    phases = []
    for offset in range(stride):
        first_tap = (offset + pad) % stride
        taps = max(0, -(-(kernel - first_tap) // stride))
        q0 = (offset + pad - first_tap) // stride
        phases.append(Phase(offset, -(-(size - offset) // stride), first_tap, taps, taps - 1 - q0))
    return phases


def filter_phase(weight_shape, dtype, rows, cols, stride, in_channels, block):
    """PrimFunc(W [O, C, R, S]) -> [C'/T, U, V, O, T]: the taps of one phase, rotated (tap u reads row
    r0 + S(U-1-u)), packed by input-channel tile T as direct.py wants."""
    o_, c_, _, _ = weight_shape
    weight = te.placeholder(weight_shape, dtype, name="weight")

    def value(cb, u, v, o, t):
        c = cb * block + t
        r = rows.first_tap + stride * (rows.taps - 1 - u)
        s = cols.first_tap + stride * (cols.taps - 1 - v)
        return tirx.if_then_else(c < c_, weight[o, clamp(c, c_), r, s], tirx.const(0, dtype))

    out = te.compute((in_channels // block, rows.taps, cols.taps, o_, block), value, name="filter_phase")
    return parallel_copy(te.create_prim_func([weight, out]), "filter_phase", 2)


def interleave_phases(phase_shapes, dtype, stride, channels, out_hw):
    """PrimFunc(*phase outputs [N, Ha, Wb, C']) -> dX [N, C, H, W]; ``phase_shapes`` row-major over (a, b),
    None for a phase without taps (its rows are 0)."""
    sources = [te.placeholder(shape, dtype, name=f"phase{i}") if shape else None for i, shape in enumerate(phase_shapes)]
    n_ = next(shape[0] for shape in phase_shapes if shape)

    def value(n, c, h, w):
        result = tirx.const(0, dtype)
        for index, src in enumerate(sources):
            if src is None:
                continue
            a, b = divmod(index, stride)
            _, ha, wb, _ = phase_shapes[index]
            here = tirx.all(tirx.floormod(h, stride) == a, tirx.floormod(w, stride) == b)
            i = clamp(tirx.floordiv(h, stride), ha)
            j = clamp(tirx.floordiv(w, stride), wb)
            result = tirx.if_then_else(here, src[n, i, j, c], result)
        return result

    out = te.compute((n_, channels, *out_hw), value, name="interleave")
    return parallel_copy(te.create_prim_func([src for src in sources if src is not None] + [out]), "interleave", 2)
