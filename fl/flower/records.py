"""How FedSkel's messages ride in Flower records.

An update travels as ONE uint8 Array holding the fl.wire encoding, so the bytes are exactly the
simulator's (skeleton rows, indices, float16 option) and decoding validates them the same way; Flower
adds only its own framing (~300 B per array). The global model the server keeps between rounds is
an ordinary ArrayRecord of float32 parameters.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedskel.fl.layout import ModelLayout
from fedskel.fl.update import Update
from fedskel.fl.wire import WireError, decode

# The keys of our messages' records
CONFIG = "config"  # ConfigRecord: the round's settings (run_config keys) and server-round
UPDATE = "update"  # ArrayRecord: the wire message (a download, or a train reply's upload)
GLOBAL = "global"  # ArrayRecord: the whole global model (evaluate requests: the pooled global accuracy)
METRICS = "metrics"  # MetricRecord of every reply: partition-id, num-partitions and what the client measured
WIRE = "wire"  # the one Array of an UPDATE / GLOBAL record


class ReplyError(ValueError):
    """A reply that must not reach aggregation; the message says why."""


def wire_record(data: bytes) -> ArrayRecord:
    return ArrayRecord({WIRE: Array(np.frombuffer(data, dtype=np.uint8))})


def wire_bytes(content: RecordDict, key: str = UPDATE) -> bytes:
    """The wire message in `content[key]`; ReplyError if it is not one uint8 vector."""
    record = content.array_records.get(key)
    if record is None:
        raise ReplyError(f"no {key!r} ArrayRecord in the message (has {sorted(content)})")
    if list(record) != [WIRE]:
        raise ReplyError(f"{key!r} must hold exactly the array {WIRE!r}, got {list(record)}")
    array = record[WIRE]
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise ReplyError(f"{key!r}/{WIRE!r} must be a 1-D uint8 array, got {array.dtype} {tuple(array.shape)}")
    return array.numpy().tobytes()


def read_update(content: RecordDict, layout: ModelLayout, key: str = UPDATE) -> tuple[Update, int]:
    """The decoded, validated update in a message and its length on the wire."""
    data = wire_bytes(content, key)
    try:
        update = decode(data, layout)
    except WireError as err:
        raise ReplyError(f"bad wire message: {err}") from None
    return update, len(data)


def params_record(params: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value, dtype=np.float32)) for name, value in params.items()})


def arrays_from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}
