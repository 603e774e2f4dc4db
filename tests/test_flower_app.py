"""The Flower app's parts that need no Flower processes: run config, reply checking, client state."""

import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedskel.fl.client_data import split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.flower import client_state
from fedskel.fl.flower.records import METRICS, UPDATE, ReplyError, wire_record
from fedskel.fl.flower.replies import read_evaluation, read_upload
from fedskel.fl.flower.run_config import AppConfig, settings_from_config, settings_record
from fedskel.fl.layout import ModelLayout
from fedskel.fl.simulator import Settings
from fedskel.fl.strategies import get_strategy
from fedskel.fl.wire import encode
from fedskel.runtime import load
from fedskel.runtime.client import Client, LocalTraining

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_defaults_are_the_simulators_defaults():
    """Flower needs every overridable key in pyproject; those defaults must not drift from Settings'."""
    defaults = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert AppConfig.from_run_config({**defaults, "artifact": "model.fsk"}) == AppConfig(Settings(), artifact="model.fsk")


def test_the_round_config_carries_every_setting_to_the_client():
    settings = Settings(
        strategy="lg-fedavg", rounds=3, fraction=0.5, local_steps=None, local_epochs=0.5, lr=0.1, momentum=0.9,
        weight_decay=1e-4, setskel_steps=1, reselect_every=None, wire_dtype="float16", seed=7,
    )
    assert settings_from_config(settings_record(settings)) == settings
    assert settings_from_config(settings_record(Settings())) == Settings()


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num-server-rounds": 2.5}, "'num-server-rounds' must be an integer"),
        ({"num-server-rounds": ""}, "'num-server-rounds' must be an integer"),
        ({"lr": "fast"}, "'lr' must be a number"),
        ({"reselect-every": "sometimes"}, "'reselect-every' must be an integer"),
        ({"fraction-train": 0.0}, r"fraction must be in \(0, 1\]"),
        ({"artifact": ""}, "'artifact' is empty"),
        ({"round-timeout": 0}, "'round-timeout' must be > 0"),
        ({"num-rounds": 3}, r"unknown run config keys \['num-rounds'\]"),
    ],
)
def test_bad_run_config_is_rejected_by_name(config, message):
    with pytest.raises(ValueError, match=message):
        AppConfig.from_run_config({"artifact": "model.fsk", **config})


def test_a_supernode_may_name_its_own_artifact():
    config = AppConfig.from_run_config({"artifact": "server.fsk", "min-nodes": 3})
    assert config.for_node({"partition-id": 0, "num-partitions": 3, "artifact": "/opt/arm64.fsk"}).artifact == "/opt/arm64.fsk"
    assert config.for_node({"partition-id": 0, "num-partitions": 3}) == config


@pytest.fixture(scope="module")
def layout(digits_artifact):
    return ModelLayout.from_manifest(load(digits_artifact).manifest)


@pytest.fixture(scope="module")
def fedskel_upload(layout, digits_artifact):
    """What a FedSkel client sends: its first k channels of every CONV layer as the skeleton."""
    params = load(digits_artifact).params
    skeleton = {conv.weight: np.arange(conv.k) for conv in layout.conv_layers}
    return get_strategy("fedskel", layout).client_update(params, skeleton, num_examples=40)


def reply(data, **metrics):
    values = {"partition-id": 1, "num-partitions": 3, "loss": 0.5, "full-ms": [], "setskel-ms": [2.0], "updateskel-ms": [1.0], **metrics}
    return RecordDict({UPDATE: wire_record(data), METRICS: MetricRecord({k: v for k, v in values.items() if v is not None})})


def test_a_good_upload_is_read_with_its_skeleton_and_wire_size(layout, fedskel_upload):
    data = encode(fedskel_upload)
    upload = read_upload(reply(data), layout)
    assert (upload.partition, upload.partitions, upload.size, upload.loss) == (1, 3, len(data), 0.5)
    assert upload.update.num_examples == 40
    for conv in layout.conv_layers:
        np.testing.assert_array_equal(upload.skeleton[conv.weight], np.arange(conv.k))
        assert upload.update.entries[conv.weight].values.shape[0] == conv.k


def test_rejected_uploads_say_why(layout, fedskel_upload):
    data = encode(fedskel_upload)
    empty = encode(type(fedskel_upload)(fedskel_upload.entries, num_examples=0))
    first = layout.conv_layers[0]
    short = dict(fedskel_upload.entries)
    # the bias one row short of its weight's skeleton (a skeleton of another k alone is a device of another ratio)
    short[first.bias] = type(short[first.bias])(short[first.bias].values[:-1], short[first.bias].rows[:-1], layout.shape(first.bias))
    not_bytes = RecordDict({UPDATE: ArrayRecord({"wire": Array(np.zeros(4, np.float32))}), METRICS: reply(data)[METRICS]})
    cases = [
        (reply(data[:-3]), "bad wire message: truncated"),
        (reply(data[:4] + b"XXXX" + data[8:]), "bad wire message: unsupported wire version"),
        (reply(empty), "num_examples = 0"),
        (reply(encode(type(fedskel_upload)(short, 40))), "cannot be aggregated: CONV layer .* bias rows .* are not the weight's rows"),
        (reply(data, loss=None), r"lacks \['loss'\]"),
        (reply(data, **{"partition-id": 3}), r"partition-id 3 outside \[0, num-partitions=3\)"),
        (RecordDict({METRICS: reply(data)[METRICS]}), "no 'update' ArrayRecord"),
        (not_bytes, "must be a 1-D uint8 array"),
    ]
    for content, message in cases:
        with pytest.raises(ReplyError, match=message):
            read_upload(content, layout)


def test_evaluation_replies_are_range_checked():
    base = {"partition-id": 0, "num-partitions": 2, "test-examples": 10}
    good = read_evaluation(RecordDict({METRICS: MetricRecord({**base, "local-accuracy": 0.7, "global-correct": 4})}))
    assert (good.local_accuracy, good.global_correct, good.test_examples) == (0.7, 4, 10)
    without_tests = read_evaluation(RecordDict({METRICS: MetricRecord({**base, "test-examples": 0})}))
    assert without_tests.local_accuracy is None and without_tests.global_correct is None
    with pytest.raises(ReplyError, match=r"metric 'global-correct' = 11 outside \[0, 10\]"):
        read_evaluation(RecordDict({METRICS: MetricRecord({**base, "local-accuracy": 0.7, "global-correct": 11})}))
    with pytest.raises(ReplyError, match=r"lacks \['global-correct'\]"):
        read_evaluation(RecordDict({METRICS: MetricRecord({**base, "local-accuracy": 0.7})}))


def test_a_client_rebuilt_from_its_saved_state_trains_on_exactly_as_before(digits_artifact):
    """What a SuperNode does between messages: the next round must not depend on the process being new."""
    data = split_among_clients(load_dataset("digits"), 3, "shards", seed=0)[1]
    training = LocalTraining(steps=3, lr=0.05, skeleton=True, setskel_steps=1, reselect_every=2)

    def fresh():
        return Client(load(digits_artifact), data.x_train, data.y_train, training, seed=5)

    original, state = fresh(), RecordDict()
    original.train_round()
    client_state.save(original, state)
    client_state.save_data(data, state)
    rebuilt, forgetful = fresh(), fresh()
    client_state.restore(rebuilt, state)

    second = original.train_round()  # keeps round 1's skeleton (reselect_every=2) and continues its batch stream
    assert rebuilt.train_round().loss == second.loss
    for name, value in original.params.items():
        np.testing.assert_array_equal(rebuilt.params[name], value)
    assert forgetful.train_round().loss != second.loss
    saved = client_state.load_data(state)
    np.testing.assert_array_equal(saved.x_train, data.x_train)
    np.testing.assert_array_equal(saved.y_test, data.y_test)
    assert client_state.load_data(RecordDict()) is None
