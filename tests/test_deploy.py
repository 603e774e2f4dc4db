"""fedskel-deploy: the runtime-only bundle (loaded here with nothing else of FedSkel), and the ssh/scp plan."""

import importlib.metadata
import os
import shlex
import subprocess
import sys
import sysconfig

import fedskel.runtime
from fedskel.runtime.artifact import read_artifact
from fedskel.runtime.signing import generate_key

RUNTIME_DIR = os.path.dirname(fedskel.runtime.__file__)


def fedskel_deploy(*args):
    return subprocess.run([sys.executable, "-m", "fedskel.targets.deploy", *map(str, args)], capture_output=True, text=True)


def test_bundle_is_the_runtime_and_its_pins(tmp_path):
    result = fedskel_deploy("--bundle", tmp_path / "bundle")
    assert result.returncode == 0, result.stderr
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "bundle") for d, _, fs in os.walk(tmp_path / "bundle") for f in fs)
    sources = sorted(f for f in os.listdir(RUNTIME_DIR) if f.endswith(".py"))
    assert files == sorted(["requirements.txt", *(f"fedskel/runtime/{f}" for f in sources)])
    for name in sources:
        assert (tmp_path / "bundle/fedskel/runtime" / name).read_bytes() == open(os.path.join(RUNTIME_DIR, name), "rb").read()
    requirements = (tmp_path / "bundle/requirements.txt").read_text().split()
    assert requirements == [
        "numpy>=1.26",
        f"apache-tvm=={importlib.metadata.version('apache-tvm')}",
        f"apache-tvm-ffi=={importlib.metadata.version('apache-tvm-ffi')}",
        f"cryptography=={importlib.metadata.version('cryptography')}",
    ]


def test_bundle_trains_an_artifact_without_the_rest_of_fedskel(tmp_path, artifact):
    """python -S: no .pth files, so the editable FedSkel install is invisible; only the bundle provides fedskel."""
    bundle = tmp_path / "bundle"
    assert fedskel_deploy("--bundle", bundle).returncode == 0
    path = artifact("lenet5", ratio=0.25, batch_size=4)
    script = """
import sys, numpy as np
import fedskel.runtime as runtime
assert runtime.__file__.startswith(sys.argv[1]), runtime.__file__
trainer = runtime.load(sys.argv[2])
x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
losses = [trainer.train_step(x, np.arange(4), lr=0.05) for _ in range(3)]
assert losses[2] < losses[0], losses
assert not [m for m in sys.modules if m.startswith(("fedskel.compiler", "fedskel.fl", "fedskel.targets"))]
print("ok", losses)
"""
    env = dict(os.environ, PYTHONPATH=f"{bundle}{os.pathsep}{sysconfig.get_paths()['purelib']}")
    result = subprocess.run([sys.executable, "-S", "-c", script, str(bundle), str(path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_dry_run_prints_the_ssh_and_scp_commands(artifact):
    path = artifact("lenet5", ratio=0.25, batch_size=4)
    result = fedskel_deploy(path, "pi@board:/srv/fedskel", "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert [c[:2] for c in commands] == [["ssh", "pi@board"], ["scp", "-r"], ["scp", commands[2][1]], ["ssh", "pi@board"], ["ssh", "pi@board"]]
    assert commands[0][2] == "mkdir -p /srv/fedskel .config/fedskel/trusted-keys"
    copied = commands[1][2:-1]
    assert [os.path.basename(p) for p in copied] == ["fedskel", "requirements.txt", os.path.basename(path)]
    assert commands[1][-1] == "pi@board:/srv/fedskel/"
    # the key that signed the artifact goes to the board's trust store
    signer = read_artifact(path).signer
    assert os.path.basename(commands[2][1]) == f"{signer}.pub" and commands[2][2] == "pi@board:.config/fedskel/trusted-keys/"
    assert commands[3][2] == (
        "python3 -m venv /srv/fedskel/venv && /srv/fedskel/venv/bin/python -m pip install -q -r /srv/fedskel/requirements.txt"
    )
    check = shlex.split(commands[4][2])
    assert check[:4] == ["cd", "/srv/fedskel", "&&", "PYTHONPATH=."] and check[-1] == os.path.basename(path)
    assert "r.load(sys.argv[1])" in check[-2]


def test_deploy_refuses_bad_input(tmp_path, artifact):
    missing = fedskel_deploy(tmp_path / "none.fsk", "pi@board:/srv", "--dry-run")
    assert missing.returncode == 2 and "not a FedSkel artifact" in missing.stderr
    no_dir = fedskel_deploy(artifact("lenet5", ratio=0.25, batch_size=4), "board", "--dry-run")
    assert no_dir.returncode == 2 and "must be [user@]host:DIR" in no_dir.stderr


def test_deploy_refuses_an_artifact_this_machine_does_not_trust(tmp_path, artifact):
    """Deploying installs the signer's key on the board: only a key trusted here may be passed on."""
    stranger = tmp_path / "stranger.pem"
    generate_key(stranger)
    path = artifact("lenet5", ratio=0.25, batch_size=4, sign_key=str(stranger))
    result = fedskel_deploy(path, "pi@board:/srv", "--dry-run")
    assert result.returncode == 2 and "trusted" in result.stderr and "ssh" not in result.stdout
