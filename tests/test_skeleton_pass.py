"""Structure of the skeleton pass's output: index inputs, k-channel backward ops, FLOPs cut to k/Cout."""

import math

import onnx
import pytest
import tvm
from tvm import relax

from fedskel.compiler.onnx_loader import load_onnx
from fedskel.compiler.training_graph import build_training_module

from onnx_models import GraphWriter, write_case


def _calls(func, op_name):
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op_name:
                yield value


def _shape(expr):
    return [int(d) for d in expr.ty.shape]


def conv_macs(call):
    """Multiply-accumulates of one CONV backward op: a CNHW weight-gradient conv or a transposed conv."""
    if call.op.name == "relax.nn.conv2d":
        kernel = _shape(call.args[1])
        return math.prod(_shape(call)) * kernel[call.attrs.kernel_layout.index("I")] * math.prod(kernel[2:])
    weight = _shape(call.args[1])
    return math.prod(_shape(call.args[0])) * weight[call.attrs.kernel_layout.index("O")] * math.prod(weight[2:])


def backward_convs(func):
    """(op, width of the dY it reads) of every CONV backward op: the weight gradients, then the dX."""
    weight_grads = [(c, _shape(c.args[1])[1]) for c in _calls(func, "relax.nn.conv2d") if c.attrs.data_layout == "CNHW"]
    return weight_grads + [(c, _shape(c.args[0])[1]) for c in _calls(func, "relax.nn.conv2d_transpose")]


def backward_macs(func):
    return sum(conv_macs(call) for call, _ in backward_convs(func))


def _training_module(tmp_path, model, ratio):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return build_training_module(load_onnx(path), ratio)


@pytest.mark.parametrize("groups,ratio", [(1, 0.25), (1, 0.5), (4, 0.25), (8, 0.5)])
def test_single_conv_backward_flops_scale_with_k(tmp_path, groups, ratio):
    # Two CONVs so the measured one (the second) has both dW and dX.
    model = GraphWriter(8, 10, 4).conv(8).relu().conv(16, groups=groups, stride=2).model()
    training = _training_module(tmp_path, model, ratio)
    full, skel = training.module["gradients"], training.module["gradients_skel"]
    layers = training.conv_layers
    first_full = 4 * 8 * 10 * 10 * 8 * 9  # dW of the first CONV (no dX: its input needs no gradient)
    k0, k1 = layers[0]["k"], layers[1]["k"]
    assert (k0, k1) == (math.ceil(ratio * 8), math.ceil(ratio * 16))
    second_full = backward_macs(full) - first_full
    assert backward_macs(skel) == first_full * k0 // 8 + second_full * k1 // 16


def test_skeleton_function_takes_one_index_vector_per_conv(tmp_path):
    path = write_case("depthwise", 4, tmp_path / "dw.onnx")
    training = build_training_module(load_onnx(path), 0.5)
    skel = training.module["gradients_skel"]
    full = training.module["gradients"]
    extra = list(skel.params)[len(full.params):]
    assert [(v.ty.dtype, _shape(v)) for v in extra] == [("int64", [layer["k"]]) for layer in training.conv_layers]


def test_no_full_width_output_gradient_reaches_a_backward_conv(tmp_path):
    """Every backward CONV in the skeleton function reads dY sliced to k channels, never all Cout."""
    path = write_case("grouped", 4, tmp_path / "g.onnx")
    training = build_training_module(load_onnx(path), 0.25)
    skel = training.module["gradients_skel"]
    ks = sorted(layer["k"] for layer in training.conv_layers)
    couts = {layer["out_channels"] for layer in training.conv_layers}
    dy_widths = [width for _, width in backward_convs(skel)]
    assert dy_widths and set(dy_widths) <= set(ks)
    assert not set(dy_widths) & couts


def test_ratio_one_keeps_every_channel(tmp_path):
    path = write_case("stride2-pad-nobias", 2, tmp_path / "s.onnx")
    training = build_training_module(load_onnx(path), 1.0)
    assert [layer["k"] for layer in training.conv_layers] == [layer["out_channels"] for layer in training.conv_layers]
    assert backward_macs(training.module["gradients_skel"]) == backward_macs(training.module["gradients"])


def test_skeleton_rows_reach_full_gradients_by_gather_not_scatter(tmp_path):
    """dW and db of each CONV come from its k rows by take + where; the only scatter left is each layer's
    Cout-entry position vector (scatter_nd into zeros lowers to a serial loop over the whole gradient)."""
    path = write_case("stride2-pad-nobias", 2, tmp_path / "s.onnx")
    training = build_training_module(load_onnx(path), 0.5)
    skel = training.module["gradients_skel"]
    scattered = sorted((str(call.ty.dtype), _shape(call)) for call in _calls(skel, "relax.scatter_nd"))
    assert scattered == sorted(("int64", [layer["out_channels"]]) for layer in training.conv_layers)
    assert len(list(_calls(skel, "relax.where"))) >= len(training.conv_layers)
