"""Bad input gets a clear error (exit code 2 from the CLI) and leaves no file behind."""

import numpy as np
import onnx
import pytest
from onnx import helper

from fedskel.compiler.cli import main as compile_cli
from fedskel.runtime import ArtifactError, InputError, SkeletonError, load
from fedskel.runtime.signing import default_signing_key

from artifact_edit import members_of, rebuilt, write
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


def test_output_path_is_checked_before_anything_else(tmp_path, capsys):
    """A missing model would be the next error: the output's is reported first, so no compile is wasted."""
    code, err = run_cli(["no-such-model.onnx", "-o", tmp_path / "missing" / "x.fsk"], capsys)
    assert code == 2 and f"output directory {tmp_path / 'missing'} does not exist" in err
    code, err = run_cli(["no-such-model.onnx", "-o", tmp_path], capsys)
    assert code == 2 and f"output {tmp_path} is a directory" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--lr", "nan"], ["--lr", "inf"], ["--momentum=-0.5"], ["--weight-decay=-inf"]])
def test_non_finite_or_negative_optimizer_defaults(tmp_path, capsys, args):
    option, value = args if len(args) == 2 else args[0].split("=")
    assert_refused(tmp_path, capsys, ["no-such-model.onnx", *args], option, "finite number >= 0", value)


def test_unreadable_signing_key(tmp_path, capsys):
    (tmp_path / "key.pem").write_text("not a key")
    assert_refused(tmp_path, capsys, ["no-such-model.onnx", "--sign-key", tmp_path / "nokey.pem"], "cannot read key file")
    assert_refused(tmp_path, capsys, ["no-such-model.onnx", "--sign-key", tmp_path / "key.pem"], "not an unencrypted PEM private key")


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


def test_a_skeleton_changed_in_place_after_a_step_is_checked_again(digits_trainer):
    """The trainer reuses the last skeleton's index tensors while it is unchanged; an edit of the same arrays
    must not slip past the check (TVM's take would read out of bounds)."""
    x, y = np.zeros(digits_trainer.input_shape, np.float32), np.zeros(8, np.int64)
    skeleton = _skeleton(digits_trainer)
    digits_trainer.train_step(x, y, skeleton=skeleton)
    name, (c, k) = next(iter(digits_trainer.skeleton_layers.items()))
    skeleton[name][-1] = c
    with pytest.raises(SkeletonError, match="out of range"):
        digits_trainer.train_step(x, y, skeleton=skeleton)
    skeleton[name][-1] = k - 1
    digits_trainer.train_step(x, y, skeleton=skeleton)


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_hyperparameters_and_parameters_are_refused_by_name(digits_trainer, bad):
    x, y = np.zeros(digits_trainer.input_shape, np.float32), np.zeros(8, np.int64)
    poisoned = x.copy()
    poisoned[3, 0, 2, 1] = bad
    for call in (lambda: digits_trainer.gradients(poisoned, y), lambda: digits_trainer.predict(poisoned),
                 lambda: digits_trainer.importance(poisoned), lambda: digits_trainer.train_step(poisoned, y)):
        with pytest.raises(InputError, match="input holds NaN or Inf"):
            call()
    for name in ("lr", "momentum", "weight_decay"):
        with pytest.raises(InputError, match=f"{name} must be a finite number >= 0, got {bad}"):
            digits_trainer.train_step(x, y, **{name: bad})
    weight = digits_trainer.params["0.weight"]
    weight[0, 0, 0, 0] = bad
    with pytest.raises(InputError, match="parameter 0.weight holds NaN or Inf"):
        digits_trainer.set_params({"0.weight": weight})


def test_negative_or_non_numeric_hyperparameters_are_refused(digits_trainer):
    x, y = np.zeros(digits_trainer.input_shape, np.float32), np.zeros(8, np.int64)
    for name, value in (("lr", -0.1), ("momentum", "0.9"), ("weight_decay", True), ("lr", [0.1])):
        with pytest.raises(InputError, match=f"{name} must be a finite number >= 0"):
            digits_trainer.train_step(x, y, **{name: value})


def _resigned(src, dst, **edits):
    """The artifact edited and signed again by the trusted key: only the loader's later checks can refuse it."""
    return write(dst, rebuilt(members_of(src), sign_with=default_signing_key(), **edits))


def test_load_refuses_tampered_unknown_or_foreign_artifacts(artifact, tmp_path):
    good = artifact("digits-cnn", ratio=0.3, batch_size=8)
    flipped = write(tmp_path / "a.fsk", [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == "params.npz" else d) for n, d in members_of(good)])
    with pytest.raises(ArtifactError, match="sha256 of member params.npz"):
        load(flipped)
    future = _resigned(good, tmp_path / "b.fsk", edit_manifest=lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="format version 99"):
        load(future)
    foreign = _resigned(good, tmp_path / "c.fsk", edit_manifest=lambda m: m["target"].update(machine="aarch64", name="arm64"))
    with pytest.raises(ArtifactError, match="aarch64"):
        load(foreign)
    garbage = tmp_path / "d.fsk"
    garbage.write_bytes(b"\0garbage")
    with pytest.raises(ArtifactError, match="not a FedSkel artifact"):
        load(garbage)