"""A refused model gets every problem in one message, in the user's terms: exit code 2, nothing written."""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fedskel.compiler.cli import main as compile_cli

from onnx_models import GraphWriter

TVM_INTERNALS = ("Check failed", "InternalError", "Error converting operator", "Traceback")


def assert_refused(tmp_path, capsys, model, *needles):
    """fedskel-compile refuses ``model``: exit 2, every needle in the message, no TVM text, no file."""
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    output = tmp_path / "out.fsk"
    code = compile_cli([str(path), "-o", str(output)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    for needle in needles:
        assert needle in captured.err
    for text in TVM_INTERNALS:
        assert text not in captured.out + captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def _after_conv(chain, constants=()):
    """A small model with ``chain`` (nodes from conv0 to their last output) after its first Conv."""
    model = GraphWriter(1, 6, 2).conv(4).model()
    conv, *rest = model.graph.node
    rest[0].input[0] = chain[-1].output[0]
    nodes = [*constants, conv, *chain, *rest]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _constant(name, values):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))


def test_every_unsupported_op_listed_at_once_with_names_and_counts(tmp_path, capsys):
    nodes = [
        helper.make_node("Softplus", ["conv0"], ["s1"], name="soft_a"),
        helper.make_node("Erf", ["s1"], ["e1"], name="erf_a"),
        helper.make_node("Softplus", ["e1"], ["s2"], name="soft_b"),
        helper.make_node("Pad", ["s2", "pads"], ["p1"], name="reflect_pad", mode="reflect"),
    ]
    model = _after_conv(nodes, [_constant("pads", [0, 0, 0, 0, 0, 0, 0, 0])])
    assert_refused(tmp_path, capsys, model, "3 nodes use ops", "Softplus x2: soft_a, soft_b", "Erf x1: erf_a",
                   "node reflect_pad (Pad): mode reflect is not supported")


def test_import_failure_names_the_node(tmp_path, capsys):
    """A Clip bound computed from the data cannot be a constant: the node and the reason are named."""
    nodes = [
        helper.make_node("ReduceMean", ["conv0"], ["level"], name="level", keepdims=0),
        helper.make_node("Clip", ["conv0", "level"], ["clipped"], name="data_clip"),
    ]
    assert_refused(tmp_path, capsys, _after_conv(nodes), "cannot import Clip node", "Clip bounds must be a constant")


def test_tvm_failure_is_told_in_our_words(tmp_path, capsys):
    """A Reshape to an impossible shape: TVM's importer fails, the message names the node and no TVM text."""
    nodes = [helper.make_node("Reshape", ["conv0", "shape"], ["bad"], name="bad_reshape")]
    assert_refused(tmp_path, capsys, _after_conv(nodes, [_constant("shape", [2, 7, 5])]), "cannot import Reshape node")
