"""The artifact file: one tar holding the compiled library, the initial parameters and a manifest.

Format (version 1): ``manifest.json`` (self-description: model, shapes, CONV layers and k, target, TVM
version, sha256 of every other member), ``model.so`` (the TVM library), ``params.npz`` (initial parameters
and states, read with allow_pickle=False).  Writers go through a temporary name and rename, so a reader
never sees half a file; readers verify every hash before anything is loaded.
"""

import hashlib
import io
import json
import os
import tarfile
import tempfile

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
PARAMS = "params.npz"


class ArtifactError(Exception):
    """An artifact that is corrupt, of an unknown format, or not runnable here."""


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def atomic_write(path, data):
    """Write bytes to ``path`` via a temporary file in the same directory and an atomic rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pack_arrays(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_arrays(data):
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def write_artifact(path, manifest, members):
    """Write ``members`` (name -> bytes) and the manifest, with the members' hashes, as one tar."""
    manifest = dict(manifest, format_version=FORMAT_VERSION, sha256={n: sha256(b) for n, b in members.items()})
    entries = {MANIFEST: json.dumps(manifest, indent=2, sort_keys=True).encode(), **members}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    atomic_write(path, buffer.getvalue())
    return manifest


def read_artifact(path):
    """(manifest, members) of a verified artifact; raises ArtifactError naming the problem."""
    try:
        with tarfile.open(path, mode="r") as tar:
            members = {}
            for info in tar.getmembers():
                if not info.isfile():
                    raise ArtifactError(f"{path}: unexpected member {info.name!r} (not a regular file)")
                members[info.name] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"{path}: not a FedSkel artifact ({exc})") from None
    if MANIFEST not in members:
        raise ArtifactError(f"{path}: no {MANIFEST} in the artifact")
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except ValueError as exc:
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: unknown artifact format version {version!r} (this runtime reads {FORMAT_VERSION})")
    expected = manifest.get("sha256", {})
    for name in (LIBRARY, PARAMS):
        if name not in members:
            raise ArtifactError(f"{path}: member {name} is missing")
    for name, data in members.items():
        if name not in expected:
            raise ArtifactError(f"{path}: member {name} is not listed in the manifest")
        if sha256(data) != expected[name]:
            raise ArtifactError(f"{path}: sha256 of member {name} does not match the manifest (corrupt or tampered)")
    return manifest, members
