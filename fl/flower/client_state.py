"""A device client's memory between Flower messages, kept in the node's `context.state`.

A SuperNode starts a fresh ClientApp process for every message, but a FedSkel client is stateful:
its personalised parameters (FedSkel and LG-FedAvg keep some rows or layers local), BatchNorm
statistics, skeleton, rounds trained (the re-selection schedule) and its seeded batch stream. All of
it is saved after training and restored before each message, so a client behaves exactly as the
simulator's long-lived one (same batches, same numbers). The node's data partition is kept too:
cutting it again would import and run the partitioner in every message's process.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedskel.fl.client_data import ClientData
from fedskel.fl.flower.records import arrays_from_record, params_record
from fedskel.runtime.client import Client

MODEL = "fedskel.model"
SKELETON = "fedskel.skeleton"
BATCHES = "fedskel.batches"
PROGRESS = "fedskel.progress"
DATA = "fedskel.data"


def save(client: Client, state: RecordDict) -> None:
    checkpoint = client.checkpoint()
    state[MODEL] = params_record(checkpoint["model"])
    if checkpoint["skeleton"] is not None:
        state[SKELETON] = ArrayRecord({name: Array(np.asarray(rows, dtype=np.int64)) for name, rows in checkpoint["skeleton"].items()})
    state[BATCHES] = ArrayRecord({"order": Array(checkpoint["batch_order"])})
    state[PROGRESS] = ConfigRecord({"rounds-trained": checkpoint["rounds_trained"], "rng": json.dumps(checkpoint["rng_state"])})


def restore(client: Client, state: RecordDict) -> None:
    """Bring a freshly built client to where it was; no-op before its first training round."""
    if MODEL not in state:
        return
    progress = state[PROGRESS]
    client.resume({
        "model": arrays_from_record(state[MODEL]),
        "skeleton": arrays_from_record(state[SKELETON]) if SKELETON in state else None,
        "batch_order": state[BATCHES]["order"].numpy(),
        "rounds_trained": progress["rounds-trained"],
        "rng_state": json.loads(progress["rng"]),
    })


def save_data(data: ClientData, state: RecordDict) -> None:
    state[DATA] = ArrayRecord({name: Array(np.asarray(getattr(data, name))) for name in ("x_train", "y_train", "x_test", "y_test")})


def load_data(state: RecordDict) -> ClientData | None:
    """The partition saved by save_data; None before the node's first message."""
    return ClientData(**arrays_from_record(state[DATA])) if DATA in state else None
