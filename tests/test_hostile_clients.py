"""Clients that lie, through the simulator and through Flower's engine with real messages: the run goes on.

A hostile client is a real client: it trains like the others, then sends something else (values a
million times too large with 2**62 claimed examples, or malformed metrics, or an error). Every such
reply is dropped with its reason or, when it is well-formed, bounded by the run's aggregation rules;
no run ends, and with the median the honest clients go on training a sane model.
"""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from fedskel.fl.aggregation import AggregationRules
from fedskel.fl.client_data import split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.flower.client_app import make_client_app
from fedskel.fl.flower.records import METRICS, UPDATE, wire_record
from fedskel.fl.flower.server_app import make_server_app
from fedskel.fl.layout import ModelLayout
from fedskel.fl.simulator import Settings, simulate
from fedskel.fl.update import Entry, Update
from fedskel.fl.wire import decode, encode
from fedskel.runtime import load
from fedskel.runtime.client import Client


class Poisoner(Client):
    """Trains, then uploads its model times a million and claims 2**62 examples."""

    def train_round(self):
        report = super().train_round()
        self.set_params({name: value * 1e6 for name, value in self.params.items()})
        return dataclasses.replace(report, num_examples=2**62)


class Crasher(Client):
    def train_round(self):
        raise RuntimeError("device fell over")


def factory(hostile):
    """make_client for simulate(): client i is hostile[i] (a Client subclass) or an honest Client."""
    made = []

    def make(*args):
        made.append(hostile.get(len(made), Client)(*args))
        return made[-1]
    return make


@pytest.fixture(scope="module")
def four_clients():
    return split_among_clients(load_dataset("digits"), 4, "iid", seed=0)


def run(digits_artifact, clients, rule):
    settings = Settings(strategy="fedavg", rounds=2, local_steps=2, lr=0.05, aggregation=AggregationRules(rule=rule))
    return simulate(digits_artifact, clients, settings, make_client=factory({1: Poisoner, 2: Crasher}))


def test_simulator_survives_hostile_clients_and_the_median_keeps_the_model_sane(digits_artifact, four_clients):
    result = run(digits_artifact, four_clients, "median")
    assert len(result["rounds"]) == 2
    for record in result["rounds"]:
        assert record["accepted"] == [0, 1, 3]  # the poisoner's upload is well-formed: bounded, not dropped
        assert [d["client"] for d in record["dropped"]] == [2] and "RuntimeError: device fell over" in record["dropped"][0]["reason"]
    second = result["rounds"][1]["client_loss"]
    assert all(math.isfinite(second[c]) and second[c] < 5 for c in (0, 3)), second

    plain = run(digits_artifact, four_clients, "mean")  # the same attack against the plain mean
    second = plain["rounds"][1]
    hurt = [c for c in (0, 3) if c not in second["accepted"] or second["client_loss"][c] > 100]
    assert hurt == [0, 3], second


# ---- through Flower's simulation engine, with real messages -------------------------------------------
HONEST, ATTACKERS = 2, 4
ROUNDS = 3


def _poisoned_metrics(**changes):
    return lambda reply, layout: _with(reply, metrics={**reply.content.metric_records[METRICS], **changes})


def _with(reply, metrics=None, wire=None):
    """The reply's content with its metrics and/or wire bytes replaced (a RecordDict as a node would send it)."""
    return RecordDict({
        UPDATE: wire_record(wire) if wire is not None else reply.content.array_records[UPDATE],
        METRICS: MetricRecord(metrics if metrics is not None else dict(reply.content.metric_records[METRICS])),
    })


def _decoded(reply, layout):
    return decode(reply.content.array_records[UPDATE]["wire"].numpy().tobytes(), layout)


def _huge_claim(reply, layout):
    """Well-formed: every value times 1e6 and 2**64 - 1 examples. The median must bound it."""
    update = _decoded(reply, layout)
    entries = {name: Entry(entry.values * 1e6, entry.rows, entry.shape) for name, entry in update.entries.items()}
    return _with(reply, wire=encode(Update(entries, 2**64 - 1)))


def _bias_rows_not_weight_rows(reply, layout):
    """The first CONV weight as its first k rows, its bias whole."""
    update, conv = _decoded(reply, layout), layout.conv_layers[0]
    entries = dict(update.entries)
    entries[conv.weight] = Entry(entries[conv.weight].values[: conv.k], np.arange(conv.k), layout.shape(conv.weight))
    return _with(reply, wire=encode(Update(entries, update.num_examples)))


def _no_examples(reply, layout):
    return _with(reply, wire=encode(Update(_decoded(reply, layout).entries, 0)))


def _trailing_bytes(reply, layout):
    return _with(reply, wire=reply.content.array_records[UPDATE]["wire"].numpy().tobytes() + b"\0\0")


def _error_reply(reply, layout):
    return Error(code=0, reason="hostile node reports an error")


# (poison, what the server's log of dropped nodes says; None: accepted, bounded by the rule)
POISONS = [
    (_poisoned_metrics(loss=[1.0]), "metric 'loss' must be a finite number, got list"),
    (_poisoned_metrics(**{"partition-id": float("nan")}), "metric 'partition-id' must be an integer, got float nan"),
    (_poisoned_metrics(**{"num-partitions": float("inf")}), "metric 'num-partitions' must be an integer, got float inf"),
    (_poisoned_metrics(**{"partition-id": [0]}), "metric 'partition-id' must be an integer, got list"),
    (_poisoned_metrics(loss=-1.0), r"metric 'loss' = -1.0 outside"),
    (_poisoned_metrics(**{"full-ms": [float("nan")]}), "'full-ms' holds a step time that is not a finite number"),
    (_huge_claim, None),
    (_bias_rows_not_weight_rows, "bias rows all are not the weight's rows"),
    (_trailing_bytes, "2 trailing bytes"),
    (_error_reply, "hostile node reports an error"),
    (_no_examples, "num_examples = 0"),
    (_poisoned_metrics(**{"num-partitions": 7}), "num-partitions 7 differs"),
]


def hostile_client_app(run_config, layout):
    """Our ClientApp for honest partitions; partitions >= HONEST reply with POISONS[(round - 1) * ATTACKERS + attacker]."""
    honest = make_client_app(run_config)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        reply = honest(msg, context)
        partition = context.node_config["partition-id"]
        if partition < HONEST:
            return reply
        server_round = msg.content.config_records["config"]["server-round"]
        poison, _ = POISONS[(server_round - 1) * ATTACKERS + partition - HONEST]
        return Message(poison(reply, layout), reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        reply = honest(msg, context)
        if context.node_config["partition-id"] < HONEST:
            return reply
        metrics = dict(reply.content.metric_records[METRICS], **{"test-examples": 1.5})
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


@pytest.mark.slow  # Flower's simulation engine (Ray) takes a minute or two to start six nodes here
def test_flower_run_drops_each_hostile_reply_with_its_reason_and_goes_on(digits_artifact, tmp_path):
    assert len(POISONS) == ROUNDS * ATTACKERS
    layout = ModelLayout.from_manifest(load(digits_artifact).manifest)
    run_config = {
        "artifact": str(digits_artifact), "strategy": "fedavg", "num-server-rounds": ROUNDS, "local-steps": 2,
        "min-nodes": HONEST + ATTACKERS, "partition": "iid", "aggregation": "median", "out": str(tmp_path),
    }
    run_simulation(
        server_app=make_server_app(run_config), client_app=hostile_client_app(run_config, layout),
        num_supernodes=HONEST + ATTACKERS, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["rounds"]) == ROUNDS
    reasons = [drop["reason"] for record in report["rounds"] for drop in record["dropped"]]
    for _, expected in POISONS:
        if expected is not None:
            assert any(re.search(expected, reason) for reason in reasons), (expected, reasons)
    accepted = [p for record in report["rounds"] for p in record["accepted"]]
    assert accepted.count(0) == accepted.count(1) == ROUNDS  # honest partitions every round
    last = report["rounds"][-1]["client_loss"]
    assert all(math.isfinite(last[p]) and last[p] < 5 for p in range(HONEST)), last
    assert report["rounds"][-1]["mean_local_accuracy"] is not None  # hostile evaluations left out, honest ones counted
