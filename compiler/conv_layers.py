"""Find the CONV layers of a Relax function: weight, optional bias, and the layer's output.

A CONV layer is ``conv2d(x, W)`` with W a trainable parameter, optionally followed by ``add(., reshape(b))``
or ``add(., b)`` with b a parameter: the importer's form of an ONNX Conv with bias.  The importance metric
is taken on the layer output (bias included, before any normalisation), the skeleton slices W and b.
"""

from dataclasses import dataclass

import tvm
from tvm import relax

from .errors import CompileError


@dataclass
class ConvLayer:
    weight: relax.Var
    bias: relax.Var | None
    conv_var: relax.Var  # binds conv2d(x, W)
    output_var: relax.Var  # the layer output: conv_var, or the bias add
    call: relax.Call

    @property
    def out_channels(self):
        return int(self.weight.ty.shape[0])


def _bindings(func):
    for block in func.body.blocks:
        yield from block.bindings


def _is_op(expr, name):
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def find_conv_layers(func, trainable):
    """CONV layers in binding order; ``trainable`` is the set of parameter Vars that get gradients."""
    trainable = set(trainable)
    layers = []
    by_conv_var = {}
    reshaped = {}  # var bound to reshape(param) -> param
    for binding in _bindings(func):
        value = binding.value
        if _is_op(value, "relax.nn.conv2d") and value.args[1] in trainable:
            if value.attrs.data_layout != "NCHW":
                continue
            if any(layer.weight.same_as(value.args[1]) for layer in layers):
                raise CompileError(f"CONV weight {value.args[1].name} is used by two CONVs; shared weights are not supported")
            layer = ConvLayer(value.args[1], None, binding.var, binding.var, value)
            layers.append(layer)
            by_conv_var[binding.var] = layer
        elif _is_op(value, "relax.reshape") and value.args[0] in trainable:
            reshaped[binding.var] = value.args[0]
        elif _is_op(value, "relax.add") and value.args[0] in by_conv_var:
            bias = reshaped.get(value.args[1], value.args[1] if value.args[1] in trainable else None)
            layer = by_conv_var[value.args[0]]
            if bias is not None and layer.bias is None and _is_channel_vector(bias, layer.out_channels):
                layer.bias = bias
                layer.output_var = binding.var
    return layers


def _is_channel_vector(var, channels):
    return [int(d) for d in var.ty.shape] == [channels]
