"""Read an ONNX file into a Relax forward function whose parameters and states are named and typed.

The training graph needs three things the ONNX importer does not give directly: which initializers are
trainable parameters and which are BatchNorm running statistics (state), a static batch size, and
BatchNorm in training mode with its running-stat outputs exposed.  Everything is checked up front so a bad
model fails here with its file, node and op named, not deep inside TVM.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import CompileError, tvm_reason
from .onnx_floats import intended_value
from .onnx_folding import fold_constants

# Ops whose imported Relax form has a gradient (checked against torch in tests/), plus shape plumbing that
# the importer folds away at compile time.
TRAINABLE_OPS = {
    "Conv", "BatchNormalization", "Gemm", "MatMul",
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish",
    "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
    "Add", "Sub", "Mul", "Div",
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split", "Pad", "Cast",
    "Identity", "Constant", "ConstantOfShape", "Shape", "Gather", "Dropout",
}
MAX_NAMES_SHOWN = 5  # node names listed per unsupported op
BN_DEFAULT_MOMENTUM = 0.9  # ONNX's default weight of the running value
# The model's compute type is its input's: float32 for devices, float64 where gradients are checked to
# rounding level (ill-conditioned deep BatchNorm nets, tests/test_compiler_gradients.py).
FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}


@dataclass
class ImportedModel:
    """A forward Relax function ``main(input, *params, *states) -> (logits, *new_states)``."""

    name: str
    module: object  # tvm.IRModule with one function, "main"
    input_shape: tuple  # (batch, C, H, W)
    dtype: str  # "float32" or "float64": of the input, parameters, states and gradients
    num_classes: int
    param_names: list  # trainable ONNX initializer names, in the order of main's parameters
    state_names: list  # BatchNorm running statistics, after the parameters
    initial_values: dict  # name -> np.ndarray for params and states


def load_onnx(path, batch_size=None, num_classes=None, name=None):
    """Validate and import an ONNX model for training (see ImportedModel)."""
    model = _read(path)
    graph = model.graph
    _check_ops(path, graph)
    input_value = _single_input(path, graph)
    dtype = FLOAT_TYPES[input_value.type.tensor_type.elem_type]
    input_shape = _fix_batch(path, input_value, batch_size)
    classes = _num_classes(path, graph, num_classes)
    _fold_integer_initializers(graph)
    fold_constants(model)
    state_names = _bn_training_mode(graph)
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    _check_initializer_types(path, initializers, dtype)
    param_names = [n for n in initializers if n not in set(state_names)]
    _order_initializers(graph, param_names + state_names)
    module = _import(path, model, dtype)
    _check_signature(path, module["main"], input_shape, param_names + state_names, initializers)
    return ImportedModel(
        name=name or str(path).rsplit("/", 1)[-1].removesuffix(".onnx"),
        module=module,
        input_shape=input_shape,
        dtype=dtype,
        num_classes=classes,
        param_names=param_names,
        state_names=state_names,
        initial_values={n: np.ascontiguousarray(initializers[n]) for n in param_names + state_names},
    )


def _read(path):
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise CompileError(f"{path}: no such file") from None
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a non-ONNX file
        raise CompileError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise CompileError(f"{path}: not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CompileError(f"{path}: invalid ONNX model: {str(exc).splitlines()[0]}") from None
    return model


def _check_ops(path, graph):
    """Refuse, all at once, every node whose op (or form of an op) the training pipeline cannot train."""
    unsupported, problems = {}, []
    for index, node in enumerate(graph.node):
        label = node.name or f"#{index}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in TRAINABLE_OPS:
            unsupported.setdefault(f"{node.domain + '.' if node.domain else ''}{node.op_type}", []).append(label)
        elif (problem := _unsupported_form(node)) is not None:
            problems.append(f"node {label} ({node.op_type}): {problem}")
    if not unsupported and not problems:
        return
    lines = []
    if unsupported:
        count = sum(len(names) for names in unsupported.values())
        lines.append(f"{count} node{'s' if count > 1 else ''} use{'' if count > 1 else 's'} ops the training pipeline does not support:")
        for op, names in sorted(unsupported.items(), key=lambda item: (-len(item[1]), item[0])):
            shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (f", ... ({len(names) - MAX_NAMES_SHOWN} more)" if len(names) > MAX_NAMES_SHOWN else "")
            lines.append(f"  {op} x{len(names)}: {shown}")
        lines.append(f"  (supported: {', '.join(sorted(TRAINABLE_OPS))})")
    lines += [f"{problem}" for problem in problems]
    raise CompileError(f"{path}: " + "\n".join(lines))


def _unsupported_form(node):
    """Why a node of a supported op still cannot be trained, or None."""
    if node.op_type == "Conv" and _text(_attr(node, "auto_pad", b"NOTSET")) != "NOTSET":
        return "auto_pad is not supported; export explicit pads"
    if node.op_type == "Pad" and _text(_attr(node, "mode", b"constant")) != "constant":
        return f"mode {_text(_attr(node, 'mode', b'constant'))} is not supported (constant only)"
    return None


def _text(attribute):
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def _attr(node, name, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute
    return helper.make_attribute(name, default)


def _single_input(path, graph):
    initializer_names = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise CompileError(f"{path}: expected exactly one data input, found {[i.name for i in inputs]}")
    value = inputs[0]
    if value.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise CompileError(f"{path}: input {value.name} must be float32 or float64")
    if len(value.type.tensor_type.shape.dim) != 4:
        raise CompileError(f"{path}: input {value.name} must be 4-D NCHW, has rank {len(value.type.tensor_type.shape.dim)}")
    return value


def _fix_batch(path, value, batch_size):
    dims = value.type.tensor_type.shape.dim
    for axis, dim in enumerate(dims[1:], start=1):
        if not dim.HasField("dim_value"):
            raise CompileError(f"{path}: input {value.name} axis {axis} is symbolic; only the batch may be")
    if dims[0].HasField("dim_value"):
        if batch_size is not None and batch_size != dims[0].dim_value:
            raise CompileError(
                f"{path}: input {value.name} fixes batch {dims[0].dim_value}; --batch-size {batch_size} differs"
            )
    else:
        if batch_size is None:
            raise CompileError(f"{path}: input {value.name} has a symbolic batch; give --batch-size")
        dims[0].Clear()
        dims[0].dim_value = batch_size
    if dims[0].dim_value < 1:
        raise CompileError(f"{path}: batch size must be >= 1")
    return tuple(int(d.dim_value) for d in dims)


def _num_classes(path, graph, num_classes):
    dims = graph.output[0].type.tensor_type.shape.dim
    read = dims[-1].dim_value if len(dims) == 2 and dims[-1].HasField("dim_value") else None
    if num_classes is None:
        if read is None:
            raise CompileError(f"{path}: cannot read the number of classes from output {graph.output[0].name}; give --num-classes")
        return int(read)
    if read is not None and read != num_classes:
        raise CompileError(f"{path}: output {graph.output[0].name} has {read} classes; --num-classes {num_classes} differs")
    return int(num_classes)


def _fold_integer_initializers(graph):
    """Integer initializers (reshape targets, gather indices) become Constant nodes so they stay static."""
    keep = []
    constants = []
    for init in graph.initializer:
        if init.data_type in FLOAT_TYPES:
            keep.append(init)
        else:
            constants.append(helper.make_node("Constant", [], [init.name], value=init))
    if constants:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        kept_inputs = [i for i in graph.input if i.name not in {c.output[0] for c in constants}]
        del graph.input[:]
        graph.input.extend(kept_inputs)
        nodes = constants + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)


def _bn_training_mode(graph):
    """Put every BatchNormalization in training mode and expose its running statistics as outputs.

    Two fixes for TVM 0.27's importer: ONNX's ``momentum`` weighs the running value while Relax's weighs the
    batch value (the stats came out several times wrong without ``1 - momentum``), and the running-stat
    outputs must be graph outputs or the importer drops them.
    """
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    types = {init.name: init.data_type for init in graph.initializer}
    states = []
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            continue
        mean, var = node.input[3], node.input[4]
        if mean not in shapes or var not in shapes:
            raise CompileError(f"node {node.name}: BatchNormalization running statistics must be initializers")
        momentum = BN_DEFAULT_MOMENTUM
        for attribute in list(node.attribute):
            if attribute.name == "momentum":
                momentum = intended_value(attribute.f)  # float32 in ONNX: 0.9 arrives as 0.89999998
            if attribute.name in ("momentum", "training_mode"):
                node.attribute.remove(attribute)
        node.attribute.extend([helper.make_attribute("momentum", 1.0 - momentum), helper.make_attribute("training_mode", 1)])
        del node.output[1:]
        stat_outputs = [f"{node.output[0]}__running_mean", f"{node.output[0]}__running_var"]
        node.output.extend(stat_outputs)
        for output, source in zip(stat_outputs, (mean, var)):
            graph.output.append(helper.make_tensor_value_info(output, types[source], shapes[source]))
        states += [mean, var]
    return states


def _order_initializers(graph, names):
    by_name = {init.name: init for init in graph.initializer}
    del graph.initializer[:]
    graph.initializer.extend(by_name[n] for n in names)


def _check_initializer_types(path, initializers, dtype):
    """One float type throughout: TVM's importer would not cast between them, its kernels would fail to build."""
    for name, array in initializers.items():
        if str(array.dtype) != dtype:
            raise CompileError(f"{path}: initializer {name} is {array.dtype}, the input is {dtype}: convert the model to one float type")


def _import(path, model, dtype):
    from .onnx_import import NodeImportError, import_onnx

    try:
        return import_onnx(model, dtype)
    except NodeImportError as exc:
        reason = tvm_reason(exc.cause) or "TVM's ONNX importer failed on it (an internal error)"
        raise CompileError(f"{path}: cannot import {exc.op_name} node {exc.node_name}: {reason}") from None
    except Exception as exc:
        reason = tvm_reason(exc) or "an internal error"
        raise CompileError(f"{path}: TVM's ONNX importer failed: {reason}") from None


def _check_signature(path, func, input_shape, names, initializers):
    """The importer's parameters must be the initializers in our order; a mismatch would mislabel weights."""
    params = list(func.params)
    if len(params) != 1 + len(names):
        raise CompileError(f"{path}: importer produced {len(params) - 1} parameters for {len(names)} initializers")
    for var, name in zip(params[1:], names):
        shape = tuple(int(d) for d in var.ty.shape)
        if shape != tuple(initializers[name].shape):
            raise CompileError(f"{path}: parameter order mismatch at {name}: {shape} vs {initializers[name].shape}")
    if tuple(int(d) for d in params[0].ty.shape) != input_shape:
        raise CompileError(f"{path}: input shape {input_shape} was not kept by the importer")
