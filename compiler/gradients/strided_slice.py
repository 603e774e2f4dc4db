"""The backward of ``relax.strided_slice`` (ONNX Slice; torch's ``chunk``, ``narrow`` and ``x[a:b:s]``).

TVM 0.27 registers none.  Each sliced axis is expanded back to its full length by a gather: input
position p takes dY at the slice element that read p, or a zero appended for the positions no element
read.  The positions come from Python's slice rules, which clamp begin and end the way ONNX Slice and
``strided_slice`` do, negative steps included.
"""

import numpy as np
from tvm import relax
from tvm.relax.op.base import register_gradient
from tvm.relax.op.grad import no_grad

from ..conv_gradient import static_shape
from ._values import numbers


def _strided_slice_grad(orig_var, orig_call, output_grad, ctx):
    data, axes, begin, end, *strides = orig_call.args
    shape = static_shape(data)
    out_shape = static_shape(orig_var)
    steps = numbers(strides[0]) if strides else [1] * len(axes.fields)
    dtype = data.ty.dtype
    grad = output_grad
    current = list(out_shape)
    for axis, first, last, step in zip(numbers(axes), numbers(begin), numbers(end), steps):
        axis = axis % len(shape)
        positions = np.arange(shape[axis])[slice(first, last, step)]
        if len(positions) != out_shape[axis]:
            raise ValueError(f"strided_slice on axis {axis}: {len(positions)} positions for {out_shape[axis]} outputs")
        source = np.full(shape[axis], len(positions), dtype="int64")  # the appended zero
        source[positions] = np.arange(len(positions))
        zero_shape = list(current)
        zero_shape[axis] = 1
        padded = relax.op.concat([grad, relax.op.zeros(zero_shape, dtype)], axis=axis)
        grad = relax.op.take(padded, relax.const(source), axis=axis)
        current[axis] = shape[axis]
    return [grad, *(no_grad(arg) for arg in orig_call.args[1:])]


register_gradient("relax.strided_slice", _strided_slice_grad, level=20)
