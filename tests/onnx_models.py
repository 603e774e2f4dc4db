"""Small ONNX models written with onnx.helper: CONV shapes the zoo does not cover, no torch involved."""

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphWriter:
    """Append nodes and random initializers; ``model()`` closes the graph with a Gemm classifier."""

    def __init__(self, in_channels, size, batch, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.current, self.channels, self.size = "input", in_channels, size
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, in_channels, size, size])

    def _init(self, name, array):
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, out_channels, kernel=3, stride=1, pad=1, dilation=1, groups=1, bias=True):
        name = f"conv{len(self.nodes)}"
        fan_in = self.channels // groups * kernel * kernel
        weight = self._init(f"{name}.weight", self.rng.standard_normal((out_channels, self.channels // groups, kernel, kernel)) / np.sqrt(fan_in))
        inputs = [self.current, weight]
        if bias:
            inputs.append(self._init(f"{name}.bias", 0.1 * self.rng.standard_normal(out_channels)))
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=[kernel, kernel],
                                           strides=[stride, stride], pads=[pad] * 4, dilations=[dilation] * 2, group=groups))
        self.current, self.channels = name, out_channels
        self.size = (self.size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        return self

    def batch_norm(self):
        name = f"bn{len(self.nodes)}"
        c = self.channels
        args = [self._init(f"{name}.weight", 1 + 0.1 * self.rng.standard_normal(c)), self._init(f"{name}.bias", 0.1 * self.rng.standard_normal(c)),
                self._init(f"{name}.running_mean", np.zeros(c)), self._init(f"{name}.running_var", np.ones(c))]
        self.nodes.append(helper.make_node("BatchNormalization", [self.current, *args], [name], name=name, momentum=0.9, epsilon=1e-5))
        self.current = name
        return self

    def relu(self):
        name = f"relu{len(self.nodes)}"
        self.nodes.append(helper.make_node("Relu", [self.current], [name], name=name))
        self.current = name
        return self

    def model(self, classes=10, global_pool=False):
        if global_pool:
            self.nodes.append(helper.make_node("GlobalAveragePool", [self.current], ["pooled"], name="pool"))
            self.current, features = "pooled", self.channels
        else:
            features = self.channels * self.size * self.size
        self.nodes.append(helper.make_node("Flatten", [self.current], ["flat"], name="flatten", axis=1))
        weight = self._init("fc.weight", self.rng.standard_normal((classes, features)) / np.sqrt(features))
        bias = self._init("fc.bias", np.zeros(classes))
        self.nodes.append(helper.make_node("Gemm", ["flat", weight, bias], ["logits"], name="fc", transB=1))
        batch = self.input.type.tensor_type.shape.dim[0].dim_value
        graph = helper.make_graph(self.nodes, "g", [self.input],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# name -> builder(batch): each one exercises a CONV form the skeleton pass must handle
ONNX_CASES = {
    "stride2-pad-nobias": lambda b: GraphWriter(3, 12, b).conv(8, stride=2, bias=False).relu().conv(6, kernel=1, pad=0).model(),
    "dilation2": lambda b: GraphWriter(3, 12, b, 1).conv(8, dilation=2, pad=2).relu().conv(4, stride=2, dilation=2, pad=0).model(),
    "grouped": lambda b: GraphWriter(4, 10, b, 2).conv(8, groups=2).relu().conv(12, groups=4, stride=2).model(),
    "depthwise": lambda b: GraphWriter(6, 10, b, 3).conv(6, groups=6).relu().conv(12, groups=6, bias=False).relu().conv(8, kernel=1, pad=0).model(),
    "batchnorm": lambda b: GraphWriter(3, 10, b, 4).conv(8, bias=False).batch_norm().relu().conv(8, stride=2).batch_norm().relu().model(global_pool=True),
}


def write_case(name, batch, path):
    onnx.save(ONNX_CASES[name](batch), str(path))
    return path


def as_float64(model):
    """The same ONNX model computing in float64: initializers, declared types, constants and casts.

    Deep BatchNorm nets are ill-conditioned (torch's own float32 gradients of resnet18 are up to 5% from
    float64), so their graphs are checked in float64, where any discrepancy is a wrong graph, not rounding.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float64), attribute.t.name))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
    return model
