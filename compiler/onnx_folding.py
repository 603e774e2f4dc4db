"""Evaluate an ONNX graph's shape plumbing at compile time (torch's F.pad exports pads computed from Shape).

TVM's importer folds only some of it: a ConstantOfShape or Concat over values computed from ``Shape``
reaches Reshape or Pad as a tensor of unknown content, and those need constants.  Every node whose inputs
are all known (Constant outputs, and ``Shape`` of a tensor whose shape ONNX inference fixes) is run here
with onnx's reference evaluator and replaced by a Constant.  Nothing that depends on the data is touched.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}


def _static_shapes(model):
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = (tuple(d.dim_value for d in dims), value.type.tensor_type.elem_type)
    return shapes


def fold_constants(model):
    """Replace, in place, every data-independent node of ``model.graph`` by Constant nodes.

    A folded Reshape target can make the next tensor's shape static: repeat until nothing folds.
    """
    while _fold_once(model):
        pass


def _fold_once(model):
    """One pass of fold_constants; whether it folded anything."""
    graph = model.graph
    folded = False
    opsets = {o.domain or "": o.version for o in model.opset_import}
    shapes = _static_shapes(model)
    known = {}
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            known[node.output[0]] = ReferenceEvaluator(node, opsets=opsets).run(None, {})[0]
            nodes.append(node)
            continue
        if node.op_type == "Shape" and node.input[0] in shapes:
            shape, elem_type = shapes[node.input[0]]
            feeds = {node.input[0]: np.zeros(shape, helper.tensor_dtype_to_np_dtype(elem_type))}
        elif node.input and node.op_type not in RANDOM_OPS and node.domain in ("", "ai.onnx") and all(
            known.get(name) is not None for name in node.input if name
        ):
            feeds = {name: known[name] for name in node.input if name}
        else:
            nodes.append(node)
            continue
        values = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
        folded = True
        for name, value in zip(node.output, values):
            known[name] = np.asarray(value)
            nodes.append(helper.make_node("Constant", [], [name], name=f"{node.name or name}__folded",
                                          value=numpy_helper.from_array(np.asarray(value), name)))
    used = {name for node in nodes for name in node.input} | {output.name for output in graph.output}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
    return folded
