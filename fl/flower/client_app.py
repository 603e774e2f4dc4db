"""The Flower ClientApp: FedSkel's device client (runtime.client.Client) on a compiled artifact.

Each message rebuilds the client from the artifact, the node's data partition (node config
`partition-id` / `num-partitions`, as Flower's simulation engine sets them) and the state saved in
`context.state`; then it applies the server's download with the strategy's `client_apply`, as the
simulator does. Train replies carry the strategy's `client_update` in our wire format (FedSkel: the
skeleton rows and their indices); evaluate replies carry accuracies only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedskel.fl.client_data import ClientData, split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.flower import client_state
from fedskel.fl.flower.records import CONFIG, GLOBAL, METRICS, UPDATE, read_update, wire_record
from fedskel.fl.flower.run_config import AppConfig, settings_from_config
from fedskel.fl.layout import ModelLayout
from fedskel.fl.simulator import client_seed, local_training, strategy_for
from fedskel.fl.strategies.base import Strategy
from fedskel.fl.wire import encode
from fedskel.runtime import load
from fedskel.runtime.client import PHASES, Client
from fedskel.runtime.evaluation import accuracy


def make_client_app(run_config: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; `run_config` overrides the run's (Flower's in-process run_simulation gives none)."""
    app = ClientApp()
    overrides = dict(run_config or {})

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device = _Device.open(msg, context, overrides)
        client = device.client
        report = client.train_round()
        update = device.strategy.client_update(client.params, client.skeleton, report.num_examples)
        data = encode(update, device.wire_dtype)  # before saving: an unsendable update leaves the state as it was
        client_state.save(client, context.state)
        metrics = {**device.identity, "num-examples": report.num_examples, "loss": report.loss}
        metrics.update({f"{phase}-ms": [1e3 * s for s in report.step_seconds[phase]] for phase in PHASES})
        return Message(RecordDict({UPDATE: wire_record(data), METRICS: MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Accuracy on the node's own test split: personalised (after the download) and of the global model.

        Local test splits are disjoint and together are the pooled test set, so the server sums the
        global model's correct counts into the simulator's pooled accuracy without holding any data.
        """
        device = _Device.open(msg, context, overrides)
        x, y = device.data.x_test, device.data.y_test
        metrics = {**device.identity, "test-examples": len(y)}
        if len(y):
            metrics["local-accuracy"] = device.client.evaluate(x, y)
            global_model = load(device.config.artifact)  # the artifact's BatchNorm states, as the simulator's server model
            update, _ = read_update(msg.content, device.layout, GLOBAL)
            global_model.set_params({name: entry.values for name, entry in update.entries.items()})
            metrics["global-correct"] = int(round(accuracy(global_model, x, y) * len(y)))
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


@dataclass
class _Device:
    """One node's client, rebuilt for a message, with the download already applied."""

    config: AppConfig
    identity: dict[str, int]
    data: ClientData
    layout: ModelLayout
    strategy: Strategy
    client: Client
    wire_dtype: str

    @classmethod
    def open(cls, msg: Message, context: Context, overrides: Mapping[str, Any]) -> _Device:
        settings = settings_from_config(msg.content.config_records[CONFIG])
        config = AppConfig.from_run_config({**context.run_config, **overrides}).for_node(context.node_config)
        identity = _identity(context.node_config)
        trainer = load(config.artifact)
        layout = ModelLayout.from_manifest(trainer.manifest)
        strategy = strategy_for(settings, layout)
        data = client_state.load_data(context.state)
        if data is None:
            options = tuple(sorted(config.partition_options.items()))
            data = _split(config.dataset, config.data_dir, identity["num-partitions"], config.partition, settings.seed, options)[identity["partition-id"]]
            client_state.save_data(data, context.state)
        seed = client_seed(settings.seed, identity["num-partitions"], identity["partition-id"])
        client = Client(trainer, data.x_train, data.y_train, local_training(settings, strategy, data, trainer), seed)
        client_state.restore(client, context.state)
        download, _ = read_update(msg.content, layout)
        client.set_params(strategy.client_apply(client.params, download))
        return cls(config, identity, data, layout, strategy, client, settings.wire_dtype)


def _identity(node_config: Mapping[str, Any]) -> dict[str, int]:
    try:
        partition, partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(f"the SuperNode's node config lacks {err}: start it with --node-config 'partition-id=I num-partitions=N'") from None
    if not 0 <= partition < partitions:
        raise ValueError(f"node config partition-id={partition} is outside [0, num-partitions={partitions})")
    return {"partition-id": partition, "num-partitions": partitions}


@functools.lru_cache(maxsize=4)
def _split(dataset: str, data_dir: str | None, partitions: int, scheme: str, seed: int, options: tuple) -> list[ClientData]:
    """Every partition's data, as the simulator cuts it; cached for simulation workers that serve many nodes."""
    return split_among_clients(load_dataset(dataset, data_dir), partitions, scheme, seed, **dict(options))


app = make_client_app()
