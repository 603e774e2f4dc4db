"""Dropout as torch trains it: a Bernoulli keep-mask with the model's rate, scaled by 1 / (1 - p).

TVM 0.27 imports ONNX Dropout as ``relax.nn.dropout``, which has no gradient and legalizes to the
identity.  Here each one becomes ``x * mask`` with the mask drawn by a counter-based generator, so it is
a pure function of (seed, layer, element index) computed with integer Relax ops, no state:

    key = lowbias32(seed ^ lowbias32(layer + 1));   h = lowbias32(lowbias32(index) ^ key)
    keep = h >= round(p * 2**32)                     (uint32 arithmetic, row-major element index)

The seed is a runtime input of the training functions (a fresh one per step); the backward multiplies
dY by the same mask because it is the same expression.  ``lowbias32`` is C. Wellons' 32-bit integer
hash (two multiply-xorshift rounds).  The inference forward drops the mask (identity).
"""

import tvm
from tvm import relax

from fedskel.runtime.manifest import DROPOUT_SEED

from .onnx_floats import intended_value

_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_SHIFTS = (16, 15, 16)


def _is_dropout(call):
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.dropout"


def has_dropout(func):
    """Whether ``func`` holds a Dropout."""
    found = []
    relax.analysis.post_order_visit(func.body, lambda expr: found.append(True) if _is_dropout(expr) else None)
    return bool(found)


def _u32(value):
    return relax.const(value & 0xFFFFFFFF, "uint32")


def _lowbias32(x):
    for i, shift in enumerate(_SHIFTS):
        x = relax.op.bitwise_xor(x, relax.op.right_shift(x, _u32(shift)))
        if i < len(_MULTIPLIERS):
            x = relax.op.multiply(x, _u32(_MULTIPLIERS[i]))
    return x


def keep_threshold(rate):
    """The uint32 a hash must reach to keep an element: P(keep) = 1 - rate, to 2**-32."""
    return min(round(rate * 2**32), 2**32 - 1)


def _scaled_mask(seed, layer, shape, rate, dtype):
    """(1 / (1 - rate)) where the element is kept, else 0: a tensor of ``shape``."""
    key = _lowbias32(relax.op.bitwise_xor(relax.op.astype(seed, "uint32"), _lowbias32(_u32(layer + 1))))
    size = 1
    for dim in shape:
        size *= dim
    index = relax.op.reshape(relax.op.arange(0, size, 1, "uint32"), shape)
    hashed = _lowbias32(relax.op.bitwise_xor(_lowbias32(index), key))
    keep = relax.op.greater_equal(hashed, _u32(keep_threshold(rate)))
    return relax.op.where(keep, relax.const(1.0 / (1.0 - rate), dtype), relax.const(0.0, dtype))


@relax.expr_functor.mutator
class _Dropout(relax.PyExprMutator):
    """Replace every relax.nn.dropout by (x * mask, mask) with the seed ``seed``, or (x, 1) if None."""

    def __init__(self, seed):
        super().__init__()
        self.seed = seed
        self.layers = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not _is_dropout(call):
            return call
        data = call.args[0]
        rate = intended_value(call.attrs.rate)  # ONNX stores it as float32
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout ratio {rate} must be in [0, 1)")
        shape = [int(d) for d in data.ty.shape]
        dtype = data.ty.dtype
        if self.seed is None or rate == 0.0:
            return relax.Tuple([data, relax.op.ones(shape, dtype)])
        mask = _scaled_mask(self.seed, self.layers, shape, rate, dtype)
        self.layers += 1
        return relax.Tuple([relax.op.multiply(data, mask), mask])


def training_dropout(func):
    """``func`` with a trailing int64 scalar parameter ``dropout_seed`` and its Dropouts drawing from it."""
    seed = relax.Var(DROPOUT_SEED, relax.TensorType((), "int64"))
    body = _Dropout(seed).visit_expr(func.body)
    return relax.Function([*func.params, seed], body, func.ret_ty, func.is_pure, func.attrs)


def inference_dropout(func):
    """``func`` with every Dropout the identity."""
    return relax.Function(func.params, _Dropout(None).visit_expr(func.body), func.ret_ty, func.is_pure, func.attrs)
