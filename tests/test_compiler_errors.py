"""Bad input gets a clear error (exit code 2 from the CLI) and leaves no file behind."""

import io
import json
import tarfile

import numpy as np
import onnx
import pytest
from onnx import helper

from fedskel.compiler.cli import main as compile_cli
from fedskel.runtime import ArtifactError, InputError, SkeletonError, load
from fedskel.runtime.artifact import MANIFEST

from onnx_models import GraphWriter, as_float64


def run_cli(args, capsys):
    code = compile_cli([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(tmp_path, capsys, args, *needles):
    output = tmp_path / "out.fsk"
    code, err = run_cli([*args, "-o", output], capsys)
    assert code == 2, err
    for needle in needles:
        assert needle in err
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []


def test_not_an_onnx_file(tmp_path, capsys):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not a protobuf" * 10)
    assert_refused(tmp_path, capsys, [bogus], str(bogus), "not an ONNX model")


def test_missing_file_and_unknown_model(tmp_path, capsys):
    assert_refused(tmp_path, capsys, [tmp_path / "nope.onnx"], "nope.onnx", "no such file")


def test_unsupported_op_names_op_and_node(tmp_path, capsys):
    model = GraphWriter(1, 6, 2).conv(4).model()
    model.graph.node.insert(1, helper.make_node("Softplus", ["conv0"], ["soft"], name="my_softplus"))
    model.graph.node[2].input[0] = "soft"
    path = tmp_path / "softplus.onnx"
    onnx.save(model, str(path))
    assert_refused(tmp_path, capsys, [path], "Softplus", "my_softplus")


@pytest.mark.parametrize("ratio", ["0", "-0.5", "1.5"])
def test_ratio_outside_unit_interval(tmp_path, capsys, ratio):
    assert_refused(tmp_path, capsys, ["digits-cnn", "--ratio", ratio], "ratio", ratio.lstrip("-"))


def test_symbolic_batch_needs_batch_size(tmp_path, capsys):
    model = GraphWriter(1, 6, 2).conv(4).model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = tmp_path / "sym.onnx"
    onnx.save(model, str(path))
    assert_refused(tmp_path, capsys, [path], "symbolic batch", "--batch-size")


def test_mixed_float_types_name_the_initializer(tmp_path, capsys):
    model = as_float64(GraphWriter(1, 6, 2).conv(4).model())
    weight = model.graph.initializer[0]
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight).astype(np.float32), weight.name))
    path = tmp_path / "mixed.onnx"
    onnx.save(model, str(path))
    assert_refused(tmp_path, capsys, [path], weight.name, "float32", "float64")


def test_unknown_target(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["digits-cnn", "--target", "pdp11"], "pdp11")


@pytest.fixture(scope="module")
def digits_trainer(artifact):
    return load(artifact("digits-cnn", ratio=0.3, batch_size=8))


def _skeleton(trainer, **override):
    skeleton = {w: np.arange(k) for w, (c, k) in trainer.skeleton_layers.items()}
    skeleton.update(override)
    return skeleton


@pytest.mark.parametrize(
    "bad,needle",
    [
        (lambda k, c: np.arange(k - 1), "k="),
        (lambda k, c: np.r_[np.arange(k - 1), c], "out of range"),
        (lambda k, c: np.r_[np.arange(k - 1), -1], "out of range"),
        (lambda k, c: np.r_[np.arange(k - 1), 0], "more than once"),
        (lambda k, c: np.arange(k) + 0.5, "1-D integer array"),
    ],
)
def test_bad_skeleton_is_refused_before_any_kernel(digits_trainer, bad, needle):
    x = np.zeros(digits_trainer.input_shape, np.float32)
    y = np.zeros(8, np.int64)
    name, (c, k) = next(iter(digits_trainer.skeleton_layers.items()))
    with pytest.raises(SkeletonError, match=needle) as info:
        digits_trainer.gradients(x, y, _skeleton(digits_trainer, **{name: bad(k, c)}))
    assert name in str(info.value)


def test_skeleton_with_unknown_or_missing_layer(digits_trainer):
    x, y = np.zeros(digits_trainer.input_shape, np.float32), np.zeros(8, np.int64)
    with pytest.raises(SkeletonError, match="unknown"):
        digits_trainer.train_step(x, y, skeleton=_skeleton(digits_trainer, bogus=np.arange(3)))
    partial = _skeleton(digits_trainer)
    partial.pop(next(iter(partial)))
    with pytest.raises(SkeletonError, match="no indices"):
        digits_trainer.train_step(x, y, skeleton=partial)


def test_bad_inputs(digits_trainer):
    x, y = np.zeros(digits_trainer.input_shape, np.float32), np.zeros(8, np.int64)
    with pytest.raises(InputError, match="float32"):
        digits_trainer.gradients(x.astype(np.float64), y)
    with pytest.raises(InputError, match="shape"):
        digits_trainer.gradients(x[:4], y)
    with pytest.raises(InputError, match="out of range"):
        digits_trainer.gradients(x, y + 10)
    with pytest.raises(InputError, match="labels shape"):
        digits_trainer.gradients(x, y[:3])


def _rewrite_artifact(src, dst, edit_manifest=None, edit_member=None):
    with tarfile.open(src) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    if edit_manifest:
        manifest = json.loads(members[MANIFEST])
        edit_manifest(manifest)
        members[MANIFEST] = json.dumps(manifest).encode()
    if edit_member:
        name, change = edit_member
        members[name] = change(members[name])
    with tarfile.open(dst, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def test_load_refuses_tampered_unknown_or_foreign_artifacts(artifact, tmp_path):
    good = artifact("digits-cnn", ratio=0.3, batch_size=8)
    flipped = _rewrite_artifact(good, tmp_path / "a.fsk", edit_member=("params.npz", lambda b: b[:-1] + bytes([b[-1] ^ 1])))
    with pytest.raises(ArtifactError, match="sha256 of member params.npz"):
        load(flipped)
    future = _rewrite_artifact(good, tmp_path / "b.fsk", edit_manifest=lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="format version 99"):
        load(future)
    foreign = _rewrite_artifact(good, tmp_path / "c.fsk", edit_manifest=lambda m: m["target"].update(machine="aarch64", name="arm64"))
    with pytest.raises(ArtifactError, match="aarch64"):
        load(foreign)
    garbage = tmp_path / "d.fsk"
    garbage.write_bytes(b"\0garbage")
    with pytest.raises(ArtifactError, match="not a FedSkel artifact"):
        load(garbage)
