"""TVM's ONNX importer, with differentiable imports for the ops it lowers to opaque kernels.

TVM 0.27 imports ONNX Clip and Pad as ``call_tir`` of TOPI kernels, through which no gradient can pass.
Here they become ``relax.clip`` and ``relax.nn.pad``, whose gradients compiler/gradients/ registers.
HardSigmoid keeps torch's exact slope (onnx_floats.py; torch's own float64 backward multiplies by the
float32 1/6, ``1.0f / 6.0f``, 3e-8 from the derivative of its forward), and LeakyRelu its slope as
written (0.1, not the float32 attribute's 0.10000000149).  Every other op goes through TVM's own converter.
"""

import contextlib
import io

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, get_constant

from .onnx_floats import intended_value


def _constant(expr, params, what):
    """A constant input as a numpy array; a computed one is refused (its gradient would be needed)."""
    value = get_constant(expr, params)
    if not isinstance(value, tvm.ir.GenericConst):
        raise ValueError(f"{what} must be a constant")
    return value.value.numpy()


def _clip(inputs, attrs, params):
    """Clip-1 (min, max attributes) and Clip-11/13 (optional min, max inputs, e.g. Cast of Constant)."""
    bounds = [float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))]
    for index in (1, 2):
        if len(inputs) > index and inputs[index] is not None:
            bounds[index - 1] = float(_constant(inputs[index], params, "Clip bounds"))
    return relax.op.clip(inputs[0], *bounds)


def _pad(inputs, attrs, params):
    """Pad-11+ in constant mode: ONNX's [begins..., ends...] become Relax's (before, after) per axis."""
    mode = attrs.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise ValueError(f"Pad mode {mode.decode() if isinstance(mode, bytes) else mode} is not supported (constant only)")
    data = inputs[0]
    rank = len(data.ty.shape)
    pads = _constant(inputs[1], params, "Pad pads").astype(int).tolist()
    axes = list(range(rank))
    if len(inputs) > 3 and inputs[3] is not None:
        axes = [a % rank for a in _constant(inputs[3], params, "Pad axes").astype(int).tolist()]
    if min(pads) < 0:
        raise ValueError("Pad with negative pads (cropping) is not supported")
    width = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        width[2 * axis], width[2 * axis + 1] = pads[i], pads[i + len(axes)]
    value = 0.0
    if len(inputs) > 2 and inputs[2] is not None:
        value = float(_constant(inputs[2], params, "Pad constant_value"))
    return relax.op.nn.pad(data, width, "constant", value)


def _hard_sigmoid(inputs, attrs, params):
    x = inputs[0]
    dtype = x.ty.dtype
    alpha, beta = (relax.const(intended_value(attrs.get(k, d)), dtype) for k, d in (("alpha", 0.2), ("beta", 0.5)))
    return relax.op.clip(relax.op.add(relax.op.multiply(alpha, x), beta), 0.0, 1.0)


def _leaky_relu(inputs, attrs, params):
    return relax.op.nn.leakyrelu(inputs[0], intended_value(attrs.get("alpha", 0.01)))


CONVERTERS = {"Clip": _clip, "Pad": _pad, "HardSigmoid": _hard_sigmoid, "LeakyRelu": _leaky_relu}


class NodeImportError(Exception):
    """A node the importer could not convert: its op, its name, and what went wrong."""

    def __init__(self, op_name, node_name, cause):
        super().__init__(f"{op_name} node {node_name}: {cause}")
        self.op_name, self.node_name, self.cause = op_name, node_name, cause


class _TrainingImporter(ONNXGraphImporter):
    def _convert_operator(self, op_name, inputs, attrs, opset):
        try:
            convert = CONVERTERS.get(op_name)
            if convert is None:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            return self.bb.normalize(convert(inputs, attrs, [self._nodes, self._params]))
        except Exception as exc:
            raise NodeImportError(op_name, attrs.get("tvm_custom", {}).get("name", "?"), exc) from None


def import_onnx(model, dtype):
    """The Relax module of a checked ONNX model, initializers kept as function parameters.

    Raises NodeImportError.  (TVM's importer also prints every failing node's inputs to stdout; that
    text is swallowed, the error says what failed.)
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    with contextlib.redirect_stdout(io.StringIO()):
        return _TrainingImporter(None, dtype, keep_params_in_input=True).from_onnx(model.graph, opset)
