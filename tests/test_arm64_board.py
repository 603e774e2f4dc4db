"""A zig-linked arm64 artifact trains on an emulated arm64 board like the host build of the same model.

The board (scripts/arm64_board.sh) is Debian bookworm arm64 under qemu-user with the runtime bundle installed:
numpy, the TVM runtime and fedskel/runtime, nothing else. Building its root the first time takes a minute or
two and needs root and network; when that is impossible the test skips and says why. No timings: this is
emulation. The arm64 and host libraries are different code (NEON vs AVX2 kernels, TVM's arm_cpu vs x86
schedules, so other summation orders and FMA contractions): float32 results agree to rounding, not bit for bit.
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
def test_arm64_gradients_and_steps_match_the_host_build(arm64_board, artifact, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=rng.standard_normal((4, 1, 28, 28)).astype(np.float32), y=np.array([0, 1, 2, 3]),
             **{"skeleton/0.weight": np.array([1, 4, 8, 13, 19]), "skeleton/3.weight": np.arange(0, 50, 4)[:13]})
    runs = {}
    for target, command in (("host", [sys.executable]), ("arm64", ["bash", BOARD, "python"])):
        path = artifact("lenet5", ratio=0.25, batch_size=4, target=target, **({"cc": "zig"} if target == "arm64" else {}))
        out = tmp_path / f"{target}.npz"
        result = subprocess.run([*command, BOARD_TRAIN, path, inputs, out], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[target] = np.load(out)
    assert read_artifact(path)[0]["linker"]["name"] == "zig"
    host, arm = runs["host"], runs["arm64"]
    assert str(arm["machine"]) == "aarch64" and str(host["machine"]) != "aarch64"
    assert sorted(arm.files) == sorted(host.files)
    for name in host.files:
        if name != "machine":
            scale = max(np.abs(host[name]).max(), 1e-6)
            assert np.abs(arm[name] - host[name]).max() <= 1e-5 * scale, name
    # the skeleton run really is restricted: CONV filters outside the skeleton get no gradient
    outside = np.setdiff1d(np.arange(20), [1, 4, 8, 13, 19])
    assert np.abs(arm["skeleton/0.weight"][outside]).max() == 0 < np.abs(arm["full/0.weight"][outside]).max()
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
