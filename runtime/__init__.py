"""Device-side runtime: load a FedSkel artifact with the TVM runtime and train it (no torch, no compiler)."""

import os
import platform
import tempfile

import tvm

from .artifact import LIBRARY, PARAMS, ArtifactError, read_artifact, unpack_arrays
from .skeleton import SkeletonError, top_k_skeleton, validate_skeleton
from .trainer import InputError, Trainer

__all__ = ["load", "Trainer", "ArtifactError", "SkeletonError", "InputError", "top_k_skeleton", "validate_skeleton"]


def load(path):
    """A Trainer for the artifact at ``path``, after checking its hashes, format and target."""
    manifest, members = read_artifact(path)
    target = manifest.get("target", {})
    machine = platform.machine()
    if target.get("machine") not in (machine, None) and not (target.get("machine") == "amd64" and machine == "x86_64"):
        raise ArtifactError(
            f"{path}: built for target {target.get('name')} ({target.get('machine')}); this machine is {machine}"
        )
    device = _device(path, target.get("device", "cpu"))
    # TVM loads libraries from files: extract to a private temporary file, removed once loaded.
    with tempfile.TemporaryDirectory() as tmp:
        library_path = os.path.join(tmp, LIBRARY)
        with open(library_path, "wb") as handle:
            handle.write(members[LIBRARY])
        library = tvm.runtime.load_module(library_path)
        return Trainer(manifest, library, unpack_arrays(members[PARAMS]), device)


def _device(path, kind):
    device = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
    if not device.exist:
        raise ArtifactError(f"{path}: built for a {kind} device, and none is available here")
    return device
