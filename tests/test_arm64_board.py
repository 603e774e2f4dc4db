"""A zig-linked arm64 artifact trains on an emulated arm64 board like the host build of the same model.

The board (scripts/arm64_board.sh) is Debian bookworm arm64 under qemu-user with the runtime bundle installed:
numpy, the TVM runtime and fedskel/runtime, nothing else. Building its root the first time takes a minute or
two and needs root and network; when that is impossible the test skips and says why. No timings: this is
emulation.

Both libraries run the same TIR kernels, float32 operations in the same order; they can differ only where
LLVM's instruction selection fuses a multiply and an add into one FMA on one ISA and not on the other (TVM lets
LLVM fuse; an x86 host without FMA never does). That is one rounding per fused pair, ~1e-7 of the value, so
the bound is 1e-5 of each tensor's largest entry: far above such differences, far below a real bug (the
skeleton mask is checked on its own). Measured on a znver3 host (AVX2 + FMA): bit-identical, every tensor of
both models.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from fedskel.runtime.artifact import read_artifact
from fedskel.targets.bundle import write_runtime_bundle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD = os.path.join(REPO, "scripts", "arm64_board.sh")
BOARD_TRAIN = os.path.join(REPO, "tests", "board_train.py")


def board(*args, root=None):
    env = dict(os.environ, PYTHON=sys.executable)  # a python with pip, to fetch the aarch64 wheels
    if root:
        env["FEDSKEL_ARM64_ROOT"] = str(root)
    return subprocess.run(["bash", BOARD, *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def arm64_board(tmp_path_factory):
    built = board("root")
    if built.returncode != 0:
        pytest.skip(f"cannot build the arm64 board root: {built.stderr.strip().splitlines()[-1]}")
    bundle = write_runtime_bundle(tmp_path_factory.mktemp("bundle"))
    installed = board("install", bundle)
    assert installed.returncode == 0, installed.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("model, input_shape", [("lenet5", (1, 28, 28)), ("resnet8", (3, 32, 32))])
def test_arm64_gradients_and_steps_match_the_host_build(arm64_board, artifact, tmp_path, model, input_shape):
    paths = {"host": artifact(model, ratio=0.25, batch_size=4),
             "arm64": artifact(model, ratio=0.25, batch_size=4, target="arm64", cc="zig")}
    manifest = read_artifact(paths["arm64"])[0]
    assert manifest["linker"]["name"] == "zig"
    rng = np.random.default_rng(0)
    skeleton = {layer["weight"]: np.sort(rng.choice(layer["out_channels"], layer["k"], replace=False))
                for layer in manifest["conv_layers"]}
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=rng.standard_normal((4, *input_shape)).astype(np.float32), y=np.array([0, 1, 2, 3]),
             **{f"skeleton/{name}": indices for name, indices in skeleton.items()})
    runs = {}
    for target, command in (("host", [sys.executable]), ("arm64", ["bash", BOARD, "python"])):
        out = tmp_path / f"{target}.npz"
        result = subprocess.run([*command, BOARD_TRAIN, paths[target], inputs, out], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[target] = np.load(out)
    host, arm = runs["host"], runs["arm64"]
    assert str(arm["machine"]) == "aarch64" and str(host["machine"]) != "aarch64"
    assert sorted(arm.files) == sorted(host.files)
    for name in host.files:
        if name != "machine":
            scale = max(np.abs(host[name]).max(), 1e-6)
            assert np.abs(arm[name] - host[name]).max() <= 1e-5 * scale, name
    # the skeleton run really is restricted: CONV filters outside the skeleton get no gradient
    for layer in manifest["conv_layers"]:
        weight = layer["weight"]
        outside = np.setdiff1d(np.arange(layer["out_channels"]), skeleton[weight])
        assert np.abs(arm[f"skeleton/{weight}"][outside]).max() == 0 < np.abs(arm[f"full/{weight}"][outside]).max(), weight
    assert host["losses"][2] < host["losses"][0]


def test_board_script_refuses_what_it_cannot_use(tmp_path):
    not_bundle = board("install", tmp_path)
    assert not_bundle.returncode == 1 and "is not a runtime bundle (make one with fedskel-deploy --bundle DIR)" in not_bundle.stderr
    empty = board("python", "-c", "pass", root=tmp_path / "empty")
    assert empty.returncode == 1 and "nothing installed on the board yet" in empty.stderr


def test_board_script_never_replaces_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "precious").write_text("keep me")
    result = board("root", root=tmp_path)
    assert result.returncode == 1
    assert "is not a FedSkel board root" in result.stderr or "needs root" in result.stderr
    assert (tmp_path / "precious").read_text() == "keep me"
