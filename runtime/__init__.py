"""Device-side runtime: load a FedSkel artifact with the TVM runtime and train it (no torch, no compiler)."""

import platform

import tvm

from .artifact import LIBRARY, PARAMS, ArtifactError, UnsignedArtifactWarning, read_artifact
from .library import open_library, virtual_machine
from .params_file import read_params
from .skeleton import SkeletonError, top_k_skeleton, validate_skeleton
from .threads import default_threads
from .trainer import InputError, Trainer

default_threads()  # before any kernel starts TVM's thread pool (runtime/threads.py)

__all__ = ["load", "Trainer", "ArtifactError", "UnsignedArtifactWarning", "SkeletonError", "InputError", "top_k_skeleton",
           "validate_skeleton"]


def load(path, trusted_keys=None, allow_unsigned=False):
    """A Trainer for the artifact at ``path``, once everything in it has been checked.

    Its signature must be by a trusted key (``trusted_keys``, else $FEDSKEL_TRUSTED_KEYS, else this
    machine's trusted-keys directory; runtime/signing.py) unless ``allow_unsigned=True``, which loads an
    unsigned or untrusted artifact with an UnsignedArtifactWarning. Then the manifest, hashes, parameters,
    target, TVM version and the library's functions are checked (runtime/artifact.py, manifest.py,
    params_file.py, library.py); any failure is an ArtifactError naming it.
    """
    manifest, members, signer = read_artifact(path, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    try:
        arrays = read_params(members[PARAMS], manifest)
        _check_runnable_here(manifest)
        device = _device(manifest["target"]["device"])
        vm = virtual_machine(open_library(members[LIBRARY]), manifest, device, run_forward=signer is None)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    return Trainer(manifest, vm, arrays, device, signer=signer)


def _check_runnable_here(manifest):
    target, machine = manifest["target"], platform.machine()
    if target["machine"] != machine and not (target["machine"] == "amd64" and machine == "x86_64"):
        raise ArtifactError(f"built for target {target['name']} ({target['machine']}); this machine is {machine}")
    if manifest["tvm_version"] != tvm.__version__:
        raise ArtifactError(f"compiled with TVM {manifest['tvm_version']}, this runtime has {tvm.__version__} (a library loads only in the TVM that built it)")


def _device(kind):
    device = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
    if not device.exist:
        raise ArtifactError(f"built for a {kind} device, and none is available here")
    return device
