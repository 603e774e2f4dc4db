"""``params.npz``: the initial parameters and states, written by numpy and read back as untrusted bytes.

The zip directory is checked before any entry is read (exactly one stored, uncompressed ``NAME.npy`` per
manifest tensor, each no larger than its shape needs), then every array against the manifest: dtype,
shape, finite values. Pickles are never loaded.
"""

import io
import zipfile

import numpy as np

from .errors import ArtifactError

_NPY_HEADER_MAX = 4096  # numpy's own header is < 200 bytes for these arrays


def pack_arrays(arrays):
    """The npz bytes of ``arrays`` (uncompressed, as np.savez writes them)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_params(data, manifest):
    """{name: array} for every parameter and state the manifest lists; ArtifactError naming what is wrong."""
    expected = {t["name"]: t for t in manifest["params"] + manifest["states"]}
    dtype = np.dtype(manifest["dtype"])
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = _checked_directory(archive, expected, dtype)
            arrays = {name: _read_array(archive, info, name) for name, info in entries.items()}
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ArtifactError(f"params.npz is not a readable npz file ({type(exc).__name__}: {exc})") from None
    for name, array in arrays.items():
        want = expected[name]
        if array.dtype != dtype:
            raise ArtifactError(f"params.npz: {name} is {array.dtype}, the manifest says {dtype}")
        if list(array.shape) != want["shape"]:
            raise ArtifactError(f"params.npz: {name} has shape {list(array.shape)}, the manifest says {want['shape']}")
        if not np.isfinite(array).all():
            raise ArtifactError(f"params.npz: {name} holds NaN or Inf")
    return arrays


def _checked_directory(archive, expected, dtype):
    """{tensor name: ZipInfo}, refusing unknown, missing, repeated, compressed or oversized entries."""
    entries = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if not info.filename.endswith(".npy") or name not in expected:
            raise ArtifactError(f"params.npz: unexpected entry {info.filename[:80]!r}")
        if name in entries:
            raise ArtifactError(f"params.npz: entry {info.filename!r} appears twice")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArtifactError(f"params.npz: entry {info.filename!r} is compressed (method {info.compress_type}); only stored entries are read")
        limit = _NPY_HEADER_MAX + dtype.itemsize * int(np.prod(expected[name]["shape"], dtype=np.int64))
        if info.file_size > limit:
            raise ArtifactError(f"params.npz: entry {info.filename!r} is {info.file_size} bytes, its shape needs at most {limit}")
        entries[name] = info
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise ArtifactError(f"params.npz lacks {missing}")
    return entries


def _read_array(archive, info, name):
    data = archive.read(info)  # checks the CRC
    try:
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001  numpy's header parser raises ValueError, SyntaxError, TokenError...
        raise ArtifactError(f"params.npz: {name} is not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if array.dtype.hasobject:
        raise ArtifactError(f"params.npz: {name} holds Python objects")
    return array
