"""fedskel-compile as a user runs it: a real process, a real artifact, then the runtime trains it."""

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from fedskel.runtime import ArtifactError, load
from fedskel.runtime.artifact import sha256


def fedskel_compile(*args):
    return subprocess.run([sys.executable, "-m", "fedskel.compiler.cli", *map(str, args)], capture_output=True, text=True)


def test_compile_zoo_model_to_a_self_describing_artifact(tmp_path):
    out = tmp_path / "lenet5-host.fsk"
    result = fedskel_compile("lenet5", "--target", "host", "--ratio", "0.25", "--batch-size", "4", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "0.weight 5/20" in result.stdout and "3.weight 13/50" in result.stdout
    with tarfile.open(out) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(members.pop("manifest.json"))
    signature = json.loads(members.pop("manifest.sig"))
    assert set(members) == {"model.so", "params.npz"} and signature["algorithm"] == "ed25519"
    assert manifest["sha256"] == {name: sha256(data) for name, data in members.items()}
    assert manifest["format_version"] == 1 and manifest["model"] == "lenet5"
    assert manifest["input_shape"] == [4, 1, 28, 28] and manifest["num_classes"] == 10
    assert manifest["conv_layers"] == [
        {"weight": "0.weight", "bias": "0.bias", "out_channels": 20, "k": 5},
        {"weight": "3.weight", "bias": "3.bias", "out_channels": 50, "k": 13},
    ]
    assert manifest["target"]["name"] == "host" and manifest["tvm_version"].startswith("0.27")
    assert f"(linked by {manifest['linker']['name']} {manifest['linker']['version']})" in result.stdout
    assert [p["name"] for p in manifest["params"]] == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]

    trainer = load(out)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    skeleton = {"0.weight": np.arange(5), "3.weight": np.arange(13)}
    losses = [trainer.train_step(x, y, skeleton=skeleton, lr=0.05) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_list_targets():
    result = fedskel_compile("--list-targets")
    assert result.returncode == 0
    assert "host" in result.stdout


def test_keygen_then_compile_with_that_key_loads_only_where_it_is_trusted(tmp_path):
    key = tmp_path / "release.pem"
    made = subprocess.run([sys.executable, "-m", "fedskel.compiler.keygen_cli", "-o", key], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600" and made.stdout.splitlines()[1].startswith("ssh-ed25519 ")
    again = subprocess.run([sys.executable, "-m", "fedskel.compiler.keygen_cli", "-o", key], capture_output=True, text=True)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    out = tmp_path / "signed.fsk"
    result = fedskel_compile("lenet5", "--batch-size", "2", "--sign-key", key, "-o", out)
    assert result.returncode == 0, result.stderr
    with pytest.raises(ArtifactError, match="not trusted here"):
        load(out)  # this machine trusts its default key, not the release key
    assert load(out, trusted_keys=[f"{key}.pub"]).signer is not None
