"""The fast local simulator: one process plays the server and every client, round by round.

Every message goes through the wire format, so the bytes reported are the lengths of what would cross
the network, and what a client receives is what decoding gives (float16 rounding included). A client
that raises or overruns its time budget is left out of that round's aggregate; the run goes on.
Numbers depend only on the inputs and the seed; wall times are kept apart (``timings``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from fedskel.fl.aggregation import AggregationRules, check_upload
from fedskel.fl.client_data import ClientData
from fedskel.fl.devices import round_wall_seconds
from fedskel.fl.layout import ModelLayout, Skeleton
from fedskel.fl.strategies import get_strategy
from fedskel.fl.update import Update
from fedskel.fl.wire import DTYPE_CODES, decode, encode, whole_model_size
from fedskel.runtime import load
from fedskel.runtime.client import PHASES, Client, LocalTraining
from fedskel.runtime.evaluation import accuracy


class ClientTimeout(RuntimeError):
    """A client's local training took longer than the round allows; the server stopped waiting."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides a run's numbers besides the artifact and the data.

    Local work is ``local_steps`` SGD steps per round for every client, or ``local_epochs`` passes
    over its own data (then clients with more data take more steps). ``client_timeout``: seconds of
    local training after which a client is dropped from the round (wall time, so not reproducible).
    ``aggregation``: what bounds one client's pull on the global model (fl/aggregation.py).
    ``local``: the parameters that never leave a client ("none", "head", "conv" or names;
    ModelLayout.personal_params); None: the strategy's own default.
    """

    strategy: str = "fedskel"
    local: str | None = None
    rounds: int = 30
    fraction: float = 1.0
    local_steps: int | None = 10
    local_epochs: float | None = None
    lr: float = 0.1
    momentum: float | None = None
    weight_decay: float | None = None
    setskel_steps: int = 5
    reselect_every: int | None = 1
    wire_dtype: str = "float32"
    client_timeout: float | None = None
    seed: int = 0
    aggregation: AggregationRules = AggregationRules()

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("give exactly one of local_steps and local_epochs")
        if self.local_epochs is not None and not self.local_epochs > 0:
            raise ValueError(f"local_epochs must be > 0, got {self.local_epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.wire_dtype not in DTYPE_CODES:
            raise ValueError(f"wire_dtype must be one of {sorted(DTYPE_CODES)}, got {self.wire_dtype!r}")
        if self.client_timeout is not None and not self.client_timeout > 0:
            raise ValueError(f"client_timeout must be > 0 seconds, got {self.client_timeout}")


def simulate(artifact: str | os.PathLike | Sequence[str | os.PathLike], clients_data: Sequence[ClientData], settings: Settings,
             progress: bool = False, allow_unsigned: bool = False, make_client=Client, slowdowns: Sequence[float] | None = None) -> dict:
    """Run the federation; returns {"settings", "clients", "rounds", "timings", "whole_model_upload_bytes"}
    (fl.report summarises).

    ``artifact``: the compiled model of every client, or one per client (device classes with their own
    skeleton ratio, fl/devices.py); the first one's parameters start the global model. ``slowdowns``: per
    client, how many times slower its device is than this machine (a round's modelled wall time,
    ``timings[i]["device_seconds"]``; default 1). ``allow_unsigned``: load an artifact without a trusted
    signature (runtime.load). ``make_client``: called as Client(trainer, x, y, training, seed) once per
    client, in order (a device emulation, a hostile client).
    """
    if not clients_data:
        raise ValueError("a federation needs at least one client")
    if not any(len(data.y_test) for data in clients_data):
        raise ValueError("every client's test split is empty: there is nothing to evaluate on")
    artifacts = [artifact] * len(clients_data) if isinstance(artifact, (str, os.PathLike)) else list(artifact)
    slowdowns = [1.0] * len(clients_data) if slowdowns is None else list(slowdowns)
    if len(artifacts) != len(clients_data) or len(slowdowns) != len(clients_data):
        raise ValueError(f"{len(clients_data)} clients but {len(artifacts)} artifacts and {len(slowdowns)} slowdowns")
    server_model = load(artifacts[0], allow_unsigned=allow_unsigned)  # the global model, evaluated on the pooled test set
    layout = ModelLayout.from_manifest(server_model.manifest)
    trainers = [load(path, allow_unsigned=allow_unsigned) for path in artifacts]
    for trainer, path in zip(trainers, artifacts):
        _check_same_model(layout, trainer, path)
    strategy = strategy_for(settings, layout)
    sampler = np.random.default_rng(np.random.SeedSequence(settings.seed).spawn(1)[0])
    clients = [
        make_client(trainer, data.x_train, data.y_train, local_training(settings, strategy, data, trainer),
                    client_seed(settings.seed, len(clients_data), i))
        for i, (trainer, data) in enumerate(zip(trainers, clients_data))
    ]
    federation = _Federation(strategy, layout, settings, server_model, clients, clients_data)
    per_round = max(1, round(settings.fraction * len(clients)))
    rounds, timings = [], []
    with tqdm(total=settings.rounds * per_round, unit="client", desc=settings.strategy, disable=not progress) as bar:
        for number in range(1, settings.rounds + 1):
            started = time.perf_counter()
            sampled = sorted(int(c) for c in sampler.choice(len(clients), size=per_round, replace=False))
            record, step_ms = federation.play_round(sampled, bar, f"round {number}/{settings.rounds}")
            rounds.append({"round": number, **record})
            local_seconds = {cid: sum(ms) / 1e3 for cid, ms in step_ms.pop("by_client").items()}
            timings.append({"seconds": time.perf_counter() - started, "step_ms": step_ms,
                            "client_seconds": [local_seconds.get(cid) for cid in range(len(clients))],
                            "device_seconds": round_wall_seconds(local_seconds, slowdowns)})
            if record["mean_local_accuracy"] is not None:
                bar.set_postfix_str(f"round {number} mean local accuracy {record['mean_local_accuracy']:.3f}")
    summary = [
        {"train": len(d.y_train), "test": len(d.y_test), "classes": np.unique(d.y_train).tolist(), "steps": c.training.steps}
        for c, d in zip(clients, clients_data)
    ]
    return {"settings": asdict(settings), "clients": summary, "rounds": rounds, "timings": timings,
            "whole_model_upload_bytes": whole_model_size(layout, settings.wire_dtype)}


def _check_same_model(server: ModelLayout, trainer, path) -> None:
    """A client's artifact may differ from the server's only in its skeleton sizes k (its device class)."""
    layout = ModelLayout.from_manifest(trainer.manifest)
    if layout.shapes != server.shapes or [c.weight for c in layout.conv_layers] != [c.weight for c in server.conv_layers]:
        raise ValueError(f"{path}: a different model from the first artifact's (parameters or CONV layers differ)")


class _Federation:
    """The server's state (global parameters, each client's last known skeleton) and the clients it talks to.

    Clients may train skeletons of different sizes k (device classes); the aggregation is per row, so mixed
    k merge like equal k.
    """

    def __init__(self, strategy, layout: ModelLayout, settings: Settings, model, clients: list[Client], data: Sequence[ClientData]):
        self.strategy, self.layout, self.settings, self.model = strategy, layout, settings, model
        self.clients, self.data = clients, data
        self.global_params = model.params
        self.skeletons: list[Skeleton | None] = [None] * len(clients)
        self.pooled_x = np.concatenate([d.x_test for d in data])
        self.pooled_y = np.concatenate([d.y_test for d in data])

    def play_round(self, sampled: list[int], bar, label: str) -> tuple[dict, dict]:
        """(the round's record, wall ms of every local step by phase, and by client under "by_client")."""
        record = {"sampled": sampled, "accepted": [], "dropped": [], "client_loss": [None] * len(self.clients)}
        traffic = {"uplink_bytes": 0, "downlink_bytes": 0}
        step_ms = {phase: [] for phase in PHASES}
        by_client = {}
        updates = []
        for cid in sampled:
            bar.set_postfix_str(f"{label} client {cid}")
            download, size = self._transmit(self.strategy.server_message(self.global_params, self.skeletons[cid]))
            traffic["downlink_bytes"] += size
            try:
                update, report = self._run_client(cid, download, traffic)
            except Exception as exc:  # a device failure of any kind: leave it out, keep the federation going
                record["dropped"].append({"client": cid, "reason": f"{type(exc).__name__}: {exc}"})
            else:
                updates.append(update)
                record["accepted"].append(cid)
                record["client_loss"][cid] = report.loss
                by_client[cid] = [1e3 * s for phase in PHASES for s in report.step_seconds[phase]]
                for phase in PHASES:
                    step_ms[phase] += [1e3 * s for s in report.step_seconds[phase]]
            bar.update()
        if updates:  # a round where every client failed leaves the global model as it was
            self.global_params = self.strategy.aggregate(self.global_params, updates, self.settings.aggregation)
        losses = [loss for loss in record["client_loss"] if loss is not None]
        local = [self._personalised_accuracy(cid) for cid in range(len(self.clients))]
        measured = [a for a in local if a is not None]
        self.model.set_params(self.global_params)
        record.update(
            loss=float(np.mean(losses)) if losses else None,
            local_accuracy=local,
            mean_local_accuracy=float(np.mean(measured)) if measured else None,
            global_accuracy=accuracy(self.model, self.pooled_x, self.pooled_y),
            **traffic,
        )
        return record, {**step_ms, "by_client": by_client}

    def _run_client(self, cid: int, download: Update, traffic: dict):
        """The client's side of a round (apply the download, train, upload), and the upload's decoding;
        raises whatever makes the client's update unusable."""
        client, strategy = self.clients[cid], self.strategy
        client.set_params(strategy.client_apply(client.params, download))
        started = time.perf_counter()
        report = client.train_round()
        elapsed = time.perf_counter() - started
        timeout = self.settings.client_timeout
        if timeout is not None and elapsed > timeout:
            raise ClientTimeout(f"local training took {elapsed:.3f} s, the budget is {timeout} s")
        update, size = self._transmit(strategy.client_update(client.params, client.skeleton, report.num_examples))
        traffic["uplink_bytes"] += size
        check_upload(update, self.layout)
        self.skeletons[cid] = uploaded_skeleton(update, self.layout)  # only once the upload is known good
        return update, report

    def _personalised_accuracy(self, cid: int) -> float | None:
        """Accuracy on the client's own test split after applying the download it would get now.

        Evaluation is not traffic: the same message is counted when the client is next sampled.
        """
        client, data = self.clients[cid], self.data[cid]
        message, _ = self._transmit(self.strategy.server_message(self.global_params, self.skeletons[cid]))
        client.set_params(self.strategy.client_apply(client.params, message))
        return client.evaluate(data.x_test, data.y_test) if len(data.y_test) else None

    def _transmit(self, update: Update) -> tuple[Update, int]:
        """What the receiver decodes, and the length of the encoded message."""
        data = encode(update, self.settings.wire_dtype)
        return decode(data, self.layout), len(data)


def strategy_for(settings: Settings, layout: ModelLayout):
    """The run's strategy with its personal layers: the same object in every engine (simulator, Flower)."""
    return get_strategy(settings.strategy, layout, local=settings.local)


def client_seed(seed: int, num_clients: int, index: int) -> np.random.SeedSequence:
    """Client ``index``'s batch-stream seed: the same in every engine (simulator, Flower) for one run seed."""
    return np.random.SeedSequence(seed).spawn(num_clients + 1)[index + 1]


def uploaded_skeleton(update: Update, layout: ModelLayout) -> Skeleton | None:
    """The skeleton a client trained with, as its upload's CONV rows show it (None: it sent none); of any
    size k per layer, since devices of one federation may train skeletons of different ratios."""
    rows = {c.weight: update.entries[c.weight].rows for c in layout.conv_layers if c.weight in update.entries}
    rows = {weight: indices for weight, indices in rows.items() if indices is not None}
    return layout.validate_any_size_skeleton(rows) if rows else None


def local_training(settings: Settings, strategy, data: ClientData, model) -> LocalTraining:
    batch = model.input_shape[0]
    steps = settings.local_steps
    if steps is None:
        steps = max(1, math.ceil(settings.local_epochs * len(data.y_train) / batch))
    return LocalTraining(
        steps=steps,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        skeleton=strategy.trains_skeleton,
        setskel_steps=settings.setskel_steps,
        reselect_every=settings.reselect_every,
    )
