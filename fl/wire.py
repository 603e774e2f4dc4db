"""Compact, versioned binary form of an Update: what actually crosses the network.

Byte counts reported for communication are len() of these messages. Decoding
trusts nothing: a message comes from another machine, so every field is checked
against the model layout before any of it reaches aggregation.

Layout (little-endian):
    header: magic b"FSKW", version u16, num_examples u64, entry count u32
    entry:  name length u16, UTF-8 name, ndim u8, full shape u32 * ndim,
            dtype code u8, flags u8 (bit 0: has rows),
            [row count u32, rows u32 * count], payload length u64, payload
"""

from __future__ import annotations

import struct

import numpy as np

from fedskel.fl.layout import ModelLayout
from fedskel.fl.update import Entry, Update

MAGIC = b"FSKW"
VERSION = 1
DTYPE_CODES = {"float32": 1, "float16": 2}
_DTYPES = {code: np.dtype(name).newbyteorder("<") for name, code in DTYPE_CODES.items()}
_HAS_ROWS = 1

_HEADER = struct.Struct("<4sHQI")
_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q"))


class WireError(ValueError):
    """A message that cannot be encoded, or a received message that must be rejected."""


def encode(update: Update, dtype: str = "float32") -> bytes:
    """Serialise an update; float16 halves the payload at the cost of precision."""
    if dtype not in DTYPE_CODES:
        raise WireError(f"unsupported wire dtype {dtype!r}; choose one of {sorted(DTYPE_CODES)}")
    parts = [_HEADER.pack(MAGIC, VERSION, update.num_examples, len(update.entries))]
    for name, entry in update.entries.items():
        parts.append(_encode_entry(name, entry, dtype))
    return b"".join(parts)


def whole_model_size(layout: ModelLayout, dtype: str = "float32") -> int:
    """Bytes of one upload carrying every parameter whole (FedAvg's), the yardstick for what a strategy saves."""
    zeros = {name: Entry(np.zeros(layout.shape(name), np.float32)) for name in layout.names}
    return len(encode(Update(zeros, num_examples=1), dtype))


def _encode_entry(name: str, entry: Entry, dtype: str) -> bytes:
    if not np.isfinite(entry.values).all():
        raise WireError(f"entry {name!r} holds NaN or Inf")
    with np.errstate(over="ignore"):  # overflow is reported just below, by name
        payload = entry.values.astype(_DTYPES[DTYPE_CODES[dtype]])
    if not np.isfinite(payload).all():
        raise WireError(f"entry {name!r} overflows {dtype}")
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > 0xFFFF:
        raise WireError(f"entry name {name[:40]!r}... is longer than 65535 bytes")
    parts = [_U16.pack(len(name_bytes)), name_bytes, _U8.pack(len(entry.shape))]
    parts += [_U32.pack(d) for d in entry.shape]
    parts += [_U8.pack(DTYPE_CODES[dtype]), _U8.pack(0 if entry.rows is None else _HAS_ROWS)]
    if entry.rows is not None:
        parts += [_U32.pack(len(entry.rows)), entry.rows.astype("<u4").tobytes()]
    data = payload.tobytes()
    parts += [_U64.pack(len(data)), data]
    return b"".join(parts)


class _Reader:
    """Bounds-checked cursor: running off the end is a truncated message, never an IndexError."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, size: int, what: str) -> memoryview:
        if self.pos + size > len(self.data):
            raise WireError(f"truncated message: {what} needs {size} bytes at offset {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: struct.Struct, what: str) -> int:
        return fmt.unpack(self.take(fmt.size, what))[0]


def decode(data: bytes, layout: ModelLayout) -> Update:
    """Parse and validate a message against the model layout; float32 values out."""
    reader = _Reader(data)
    magic, version, num_examples, count = _HEADER.unpack(reader.take(_HEADER.size, "header"))
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}, this build reads {VERSION}")
    entries: dict[str, Entry] = {}
    for _ in range(count):
        name, entry = _decode_entry(reader, layout)
        if name in entries:
            raise WireError(f"entry {name!r} appears twice")
        entries[name] = entry
    if reader.pos != len(reader.data):
        raise WireError(f"{len(reader.data) - reader.pos} trailing bytes after the last entry")
    return Update(entries, num_examples)


def _decode_entry(reader: _Reader, layout: ModelLayout) -> tuple[str, Entry]:
    name_bytes = reader.take(reader.unpack(_U16, "name length"), "name")
    try:
        name = bytes(name_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"entry name {bytes(name_bytes)!r} is not UTF-8") from None
    if name not in layout.shapes:
        raise WireError(f"unknown parameter {name!r}")
    ndim = reader.unpack(_U8, f"{name!r} ndim")
    shape = tuple(reader.unpack(_U32, f"{name!r} shape") for _ in range(ndim))
    if shape != layout.shapes[name]:
        raise WireError(f"entry {name!r} has shape {shape}, layout says {layout.shapes[name]}")
    code = reader.unpack(_U8, f"{name!r} dtype")
    if code not in _DTYPES:
        raise WireError(f"entry {name!r} has unknown dtype code {code}")
    flags = reader.unpack(_U8, f"{name!r} flags")
    if flags & ~_HAS_ROWS:
        raise WireError(f"entry {name!r} has unknown flags {flags:#x}")
    rows = None
    value_shape = shape
    if flags & _HAS_ROWS:
        if name not in layout.conv_param_names:
            raise WireError(f"entry {name!r} carries rows but is not a conv weight or bias")
        num_rows = reader.unpack(_U32, f"{name!r} row count")
        rows = np.frombuffer(reader.take(4 * num_rows, f"{name!r} rows"), dtype="<u4").astype(np.int64)
        value_shape = (num_rows, *shape[1:])
    dtype = _DTYPES[code]
    expected = int(np.prod(value_shape, dtype=np.int64)) * dtype.itemsize
    size = reader.unpack(_U64, f"{name!r} payload length")
    if size != expected:
        raise WireError(f"entry {name!r} payload is {size} bytes, expected {expected}")
    values = np.frombuffer(reader.take(size, f"{name!r} payload"), dtype=dtype)
    if not np.isfinite(values).all():
        raise WireError(f"entry {name!r} holds NaN or Inf")
    values = values.astype(np.float32).reshape(value_shape)
    try:
        return name, Entry(values, rows, shape)
    except ValueError as err:
        raise WireError(f"entry {name!r}: {err}") from None
