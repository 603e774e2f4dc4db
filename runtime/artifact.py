"""The artifact file: one uncompressed tar holding the manifest, its signature, the library and the parameters.

Format (version 1): ``manifest.json`` (self-description: model, shapes, CONV layers and k, target, TVM
version, sha256 of the library and the parameters), ``manifest.sig`` (Ed25519 signature of the manifest's
exact bytes, runtime/signing.py), ``model.so`` (the TVM library), ``params.npz`` (initial parameters and
states). Writers go through a temporary name and rename, so a reader never sees half a file.

Readers trust nothing until it is checked, in this order, all in memory: the file is a regular file of
bounded size; the tar is uncompressed, its members are exactly the known names, regular, each once and
each within its size limit (checked from the header, before its bytes are read); the signature is by a
trusted key; the manifest is well-formed (runtime/manifest.py); every hash matches. Only then does any
byte reach the disk or a library get opened (runtime/library.py).
"""

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
import warnings
from typing import NamedTuple

from .errors import ArtifactError
from .manifest import FORMAT_VERSION, HASHED_MEMBERS, LIBRARY, PARAMS, parse_manifest, validate_manifest
from .params_file import pack_arrays

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MIB = 2**20
MAX_ARTIFACT_BYTES = 1024 * MIB
MEMBER_LIMITS = {MANIFEST: 1 * MIB, SIGNATURE: 4096, LIBRARY: MAX_ARTIFACT_BYTES, PARAMS: MAX_ARTIFACT_BYTES}
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4"}

__all__ = ["ArtifactError", "UnsignedArtifactWarning", "Artifact", "FORMAT_VERSION", "LIBRARY", "PARAMS", "MANIFEST",
           "SIGNATURE", "read_artifact", "write_artifact", "atomic_write", "sha256", "pack_arrays"]


class UnsignedArtifactWarning(UserWarning):
    """An artifact loaded without a trusted signature, because the caller allowed it by name."""


class Artifact(NamedTuple):
    manifest: dict
    members: dict  # LIBRARY and PARAMS bytes, hashes verified
    signer: str | None  # key id of the trusted key that signed it; None when loaded with allow_unsigned


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


def write_artifact(path, manifest, members, signing_key=None):
    """Write ``members`` (name -> bytes) and the manifest with their hashes as one tar; signed when a key is given."""
    manifest = dict(manifest, format_version=FORMAT_VERSION, sha256={n: sha256(b) for n, b in members.items()})
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    validate_manifest(parse_manifest(manifest_bytes))  # what a reader would refuse is never written
    entries = {MANIFEST: manifest_bytes}
    if signing_key is not None:
        from .signing import sign_manifest

        entries[SIGNATURE] = sign_manifest(manifest_bytes, signing_key)
    entries.update(members)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    atomic_write(path, buffer.getvalue())
    return manifest


def read_artifact(path, trusted_keys=None, allow_unsigned=False):
    """The verified Artifact at ``path``; ArtifactError naming the problem.

    ``trusted_keys``: public keys (paths, ``ssh-ed25519`` lines or key objects) to accept instead of this
    machine's (runtime/signing.py). ``allow_unsigned``: load an artifact without a trusted signature, with
    an UnsignedArtifactWarning; its hashes and everything else are still checked.
    """
    members = _read_members(path)
    if MANIFEST not in members:
        raise ArtifactError(f"{path}: no {MANIFEST} in the artifact")
    try:
        signer = _authenticate(members[MANIFEST], members.get(SIGNATURE), trusted_keys, allow_unsigned)
        manifest = validate_manifest(parse_manifest(members[MANIFEST]))
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    for name in HASHED_MEMBERS:
        if name not in members:
            raise ArtifactError(f"{path}: member {name} is missing")
        if sha256(members[name]) != manifest["sha256"][name]:
            raise ArtifactError(f"{path}: sha256 of member {name} does not match the manifest (corrupt or tampered)")
    return Artifact(manifest, {name: members[name] for name in HASHED_MEMBERS}, signer)


def _read_members(path):
    """{name: bytes} of the tar at ``path``, bounded and strict (see the module docstring)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below then refuses it
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"{path}: not a regular file")
            if info.st_size > MAX_ARTIFACT_BYTES:
                raise ArtifactError(f"{path}: {info.st_size} bytes, more than the {MAX_ARTIFACT_BYTES} an artifact may have")
            head = handle.read(8)
            for magic, kind in _COMPRESSED.items():
                if head.startswith(magic):
                    raise ArtifactError(f"{path}: a {kind}-compressed file; artifacts are uncompressed tars")
            handle.seek(0)
            with tarfile.open(fileobj=handle, mode="r:") as tar:
                return _members(tar, path)
    except (tarfile.TarError, OSError, EOFError, UnicodeError) as exc:
        raise ArtifactError(f"{path}: not a FedSkel artifact ({type(exc).__name__}: {exc})") from None


def _members(tar, path):
    members, total = {}, 0
    while (info := tar.next()) is not None:
        if info.name not in MEMBER_LIMITS:
            raise ArtifactError(f"{path}: unexpected member {info.name[:80]!r}")
        if info.name in members:
            raise ArtifactError(f"{path}: member {info.name} appears twice")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.pax_headers:
            raise ArtifactError(f"{path}: member {info.name} is not a plain regular file (tar type {info.type!r})")
        total += info.size
        if info.size > MEMBER_LIMITS[info.name] or total > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"{path}: member {info.name} claims {info.size} bytes, more than allowed")
        data = tar.extractfile(info).read()
        if len(data) != info.size:
            raise ArtifactError(f"{path}: member {info.name} is truncated ({len(data)} of {info.size} bytes)")
        members[info.name] = data
    return members


def _authenticate(manifest_bytes, signature, trusted_keys, allow_unsigned):
    """The signer's key id; without a trusted signature, ArtifactError, or a warning under ``allow_unsigned``."""
    from .signing import trusted_keys as resolve_keys, verify_manifest

    try:
        if signature is None:
            raise ArtifactError("the artifact is not signed")
        try:
            return verify_manifest(manifest_bytes, signature, resolve_keys(trusted_keys))
        except ImportError:
            raise ArtifactError("cannot check its signature: the 'cryptography' package is not installed") from None
    except ArtifactError as exc:
        if not allow_unsigned:
            raise ArtifactError(f"{exc}; refused (allow_unsigned=True / --allow-unsigned loads it anyway)") from None
        warnings.warn(f"loading an artifact without a trusted signature ({exc})", UnsignedArtifactWarning, stacklevel=4)
        return None
