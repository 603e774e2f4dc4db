"""Heterogeneous federations (fl/devices.py): device classes with their own skeleton ratio and speed."""

import json

import numpy as np
import pytest

from fedskel.fl.cli import sim_main
from fedskel.fl.client_data import split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.devices import DeviceClass, assign_classes, parse_device_classes, round_wall_seconds
from fedskel.fl.simulator import Settings, simulate


def test_parse_device_classes():
    assert parse_device_classes("0.1:0.3:4,0.3:0.4:2,1.0:0.3") == (
        DeviceClass(0.1, 0.3, 4.0), DeviceClass(0.3, 0.4, 2.0), DeviceClass(1.0, 0.3, 1.0))


@pytest.mark.parametrize("text, message", [
    ("0.1:0.5,0.3:0.4", "sum to 0.9"),
    ("0.1", "expected ratio:share"),
    ("1.5:1", "ratio must be in"),
    ("0.1:0.5:0.5,0.3:0.5", "slowdown must be"),
    ("a:1", "could not convert"),
])
def test_parse_device_classes_names_the_bad_part(text, message):
    with pytest.raises(ValueError, match=message):
        parse_device_classes(text)


def test_classes_get_their_share_of_clients_by_largest_remainder():
    classes = parse_device_classes("0.1:0.3,0.3:0.4,1.0:0.3")
    assert assign_classes(classes, 10) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert np.bincount(assign_classes(classes, 7)).tolist() == [2, 3, 2]
    with pytest.raises(ValueError, match="without a client"):
        assign_classes(parse_device_classes("0.1:0.9,1:0.1"), 3)


def test_a_round_lasts_as_long_as_its_slowest_modelled_device():
    assert round_wall_seconds({0: 1.0, 2: 0.5, 3: 0.2}, [1, 9, 3, 10]) == 2.0
    assert round_wall_seconds({0: 1.0, 1: 3.0}) == 3.0
    assert round_wall_seconds({}) == 0.0


@pytest.fixture(scope="module")
def four_clients():
    return split_among_clients(load_dataset("digits"), 4, "shards", 0)


def test_mixed_skeleton_sizes_train_and_aggregate_per_row(artifact, digits_artifact, four_clients):
    """Two clients at r = 0.3 on 3x slower devices, two at r = 1: each uploads its own k rows, the server
    merges them, and a round's modelled wall time is the slowest client's seconds times its slowdown."""
    full = artifact("digits-cnn", ratio=1.0, batch_size=16)
    settings = Settings(strategy="fedskel", rounds=2, local_steps=2, setskel_steps=1, local="none")
    result = simulate([digits_artifact, digits_artifact, full, full], four_clients, settings, slowdowns=[3, 3, 1, 1])
    assert result["rounds"][-1]["accepted"] == [0, 1, 2, 3]
    second = result["rounds"][1]
    sizes = [second["uplink_bytes"]]
    assert sizes[0] > 0
    for timing in result["timings"]:
        seconds = timing["client_seconds"]
        assert timing["device_seconds"] == pytest.approx(max(s * f for s, f in zip(seconds, [3, 3, 1, 1])))
    alone = simulate([full] * 4, four_clients, settings)
    assert second["uplink_bytes"] < alone["rounds"][1]["uplink_bytes"]  # the r = 0.3 clients send fewer rows


def test_simulate_refuses_artifacts_of_different_models(artifact, digits_artifact, four_clients):
    other = artifact("lenet5", ratio=0.3, batch_size=16)
    with pytest.raises(ValueError, match="a different model"):
        simulate([digits_artifact, digits_artifact, digits_artifact, other], four_clients, Settings(rounds=1))


def test_cli_ratios_compile_one_artifact_per_class_and_report_each_class(tmp_path, capsys):
    out = tmp_path / "hetero"
    assert sim_main(["--model", "digits-cnn", "--clients", "4", "--rounds", "2", "--local-steps", "2", "--setskel-steps", "1",
                     "--ratios", "0.2:0.5:4,1.0:0.5", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.glob("*.fsk")) == ["model-r0.2.fsk", "model-r1.fsk"]
    assert [(d["ratio"], d["slowdown"], d["clients"]) for d in report["config"]["devices"]] == [(0.2, 4.0, [0, 1]), (1.0, 1.0, [2, 3])]
    classes = report["summary"]["device_classes"]
    assert [c["ratio"] for c in classes] == [0.2, 1.0] and all(0 <= c["final_mean_local_accuracy"] <= 1 for c in classes)
    assert "r=0.2/1 devices x4/x1" in capsys.readouterr().out
    assert sim_main(["--artifact", str(out / "model-r1.fsk"), "--ratios", "0.2:0.5,1:0.5", "--out", str(tmp_path / "x")]) == 2
    assert "leave out --artifact" in capsys.readouterr().err
