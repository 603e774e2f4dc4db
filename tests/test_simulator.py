import json

import numpy as np
import pytest

from fedskel.fl.cli import report_main, sim_main
from fedskel.fl.client_data import ClientData, split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.report import build_report
from fedskel.fl.simulator import Settings, simulate

REPRODUCIBLE = ("settings", "clients", "rounds")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def four_clients(digits):
    return split_among_clients(digits, 4, "shards", seed=0)


def run(artifact, clients_data, **settings):
    return simulate(artifact, clients_data, Settings(**{"rounds": 2, "local_steps": 2, "setskel_steps": 1, **settings}))


@pytest.fixture(scope="module")
def fedskel_run(digits_artifact, four_clients):
    return run(digits_artifact, four_clients, strategy="fedskel", rounds=3, fraction=0.75)


def test_same_settings_give_the_same_numbers(digits_artifact, four_clients, fedskel_run):
    again = run(digits_artifact, four_clients, strategy="fedskel", rounds=3, fraction=0.75)
    assert {k: again[k] for k in REPRODUCIBLE} == {k: fedskel_run[k] for k in REPRODUCIBLE}
    assert [len(r["sampled"]) for r in again["rounds"]] == [3, 3, 3]
    other_seed = run(digits_artifact, four_clients, strategy="fedskel", rounds=3, fraction=0.75, seed=1)
    assert [r["loss"] for r in other_seed["rounds"]] != [r["loss"] for r in fedskel_run["rounds"]]


def test_a_round_records_accuracy_loss_traffic_and_step_times(fedskel_run):
    for record, timing in zip(fedskel_run["rounds"], fedskel_run["timings"]):
        assert record["accepted"] == record["sampled"] and record["dropped"] == []
        assert len(record["local_accuracy"]) == 4 and all(0 <= a <= 1 for a in record["local_accuracy"])
        assert record["mean_local_accuracy"] == pytest.approx(np.mean(record["local_accuracy"]))
        assert 0 <= record["global_accuracy"] <= 1
        assert [loss is not None for loss in record["client_loss"]] == [c in record["sampled"] for c in range(4)]
        assert record["uplink_bytes"] > 0 and record["downlink_bytes"] > 0
        # every sampled client takes one SetSkel step (re-selection every round) and one UpdateSkel step
        assert {p: len(ms) for p, ms in timing["step_ms"].items()} == {"full": 0, "setskel": 3, "updateskel": 3}


def test_fedskel_uplink_is_under_35_percent_of_fedavg(digits_artifact, four_clients, fedskel_run):
    fedavg = run(digits_artifact, four_clients, strategy="fedavg", rounds=3, fraction=0.75)
    for skel, full in zip(fedskel_run["rounds"], fedavg["rounds"]):
        assert skel["sampled"] == full["sampled"]
        assert skel["uplink_bytes"] < 0.35 * full["uplink_bytes"]
    # no skeleton is known before a client's first upload, so the first download is every shared parameter
    # whole: the model less the classifier, which FedSkel keeps local by default
    conv_whole = run(digits_artifact, four_clients, strategy="lg-fedavg", local="head", rounds=1, fraction=0.75)
    assert fedskel_run["rounds"][0]["downlink_bytes"] == conv_whole["rounds"][0]["downlink_bytes"]
    assert fedskel_run["rounds"][2]["downlink_bytes"] < 0.5 * fedavg["rounds"][2]["downlink_bytes"]


def test_float16_wire_halves_the_traffic(digits_artifact, four_clients):
    wide = run(digits_artifact, four_clients[:2], strategy="fedavg", rounds=1, local_steps=1)
    narrow = run(digits_artifact, four_clients[:2], strategy="fedavg", rounds=1, local_steps=1, wire_dtype="float16")
    ratio = narrow["rounds"][0]["uplink_bytes"] / wide["rounds"][0]["uplink_bytes"]
    assert 0.5 < ratio < 0.51


def test_a_failing_client_is_left_out_of_the_aggregate(digits_artifact, four_clients):
    healthy = four_clients[:2]
    broken = ClientData(four_clients[2].x_train * np.float32(1e37), *(getattr(four_clients[2], f) for f in ("y_train", "x_test", "y_test")))
    with_failure = run(digits_artifact, [*healthy, broken], strategy="fedavg")
    without = run(digits_artifact, healthy, strategy="fedavg")
    for failed, clean in zip(with_failure["rounds"], without["rounds"]):
        assert failed["accepted"] == [0, 1]
        assert [d["client"] for d in failed["dropped"]] == [2]
        assert failed["dropped"][0]["reason"].startswith("TrainingDiverged: loss is ")
        # the healthy clients see exactly the global model they would see without the broken one
        assert failed["client_loss"][:2] == clean["client_loss"]
        assert failed["local_accuracy"][:2] == clean["local_accuracy"]
        assert failed["uplink_bytes"] == clean["uplink_bytes"]


def test_a_client_over_its_time_budget_is_left_out(digits_artifact, four_clients):
    result = run(digits_artifact, four_clients[:2], strategy="fedavg", client_timeout=1e-6)
    for record in result["rounds"]:
        assert record["accepted"] == [] and record["uplink_bytes"] == 0
        assert all(d["reason"].startswith("ClientTimeout: local training took") for d in record["dropped"])
    # nothing was aggregated: the global model is still the initial one
    assert result["rounds"][0]["global_accuracy"] == result["rounds"][1]["global_accuracy"]


def test_local_epochs_give_each_client_steps_for_its_own_data(digits_artifact, four_clients):
    result = run(digits_artifact, four_clients, strategy="fedavg", rounds=1, local_steps=None, local_epochs=0.25)
    assert [c["train"] for c in result["clients"]] == [215, 144, 144, 218]
    assert [c["steps"] for c in result["clients"]] == [4, 3, 3, 4]  # ceil(0.25 * n / 16)
    assert len(result["timings"][0]["step_ms"]["full"]) == 14


def test_a_short_run_beats_chance_clearly(digits_artifact, digits):
    """IID clients, 10 classes (chance: 10%).  The model needs about 100 SGD steps to leave its initial
    plateau, and when it leaves depends on rounding: after 3 rounds of 40 steps, seeds 0-3 gave 25-69%; after 6
    rounds (lr 0.05) seeds 0-5 all gave 89-95%."""
    clients = split_among_clients(digits, 2, "iid", seed=0)
    result = run(digits_artifact, clients, strategy="fedavg", rounds=6, local_steps=40, lr=0.05, momentum=0.9)
    assert result["rounds"][-1]["global_accuracy"] > 0.75


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"local_steps": 5, "local_epochs": 1.0}, "exactly one of local_steps and local_epochs"),
        ({"local_steps": None}, "exactly one of local_steps and local_epochs"),
        ({"local_steps": None, "local_epochs": -1.0}, "local_epochs must be > 0"),
        ({"wire_dtype": "bfloat16"}, "wire_dtype must be one of"),
        ({"client_timeout": 0.0}, "client_timeout must be > 0"),
    ],
)
def test_settings_reject_bad_values(settings, message):
    with pytest.raises(ValueError, match=message):
        Settings(**settings)


def test_simulate_rejects_an_empty_federation_or_no_test_data(digits_artifact, four_clients):
    with pytest.raises(ValueError, match="at least one client"):
        simulate(digits_artifact, [], Settings())
    no_test = [ClientData(c.x_train, c.y_train, c.x_test[:0], c.y_test[:0]) for c in four_clients]
    with pytest.raises(ValueError, match="test split is empty"):
        simulate(digits_artifact, no_test, Settings())


def test_cli_writes_run_directories_and_compares_them(digits_artifact, tmp_path, capsys):
    common = ["--artifact", str(digits_artifact), "--clients", "3", "--rounds", "2", "--local-steps", "2",
              "--setskel-steps", "1", "--no-progress"]
    for strategy in ("fedavg", "fedskel"):
        assert sim_main([*common, "--strategy", strategy, "--out", str(tmp_path / strategy)]) == 0
        assert (tmp_path / strategy / "curves.png").stat().st_size > 0
    report = json.loads((tmp_path / "fedskel" / "report.json").read_text())
    assert report["config"]["ratio"] == 0.3 and report["config"]["clients"] == 3
    assert report["summary"]["total_uplink_bytes"] == sum(r["uplink_bytes"] for r in report["rounds"])
    assert report["timings"]["steps"] == {"full": 0, "setskel": 6, "updateskel": 6}

    capsys.readouterr()
    plot = tmp_path / "comparison.png"
    assert report_main([str(tmp_path / "fedavg"), str(tmp_path / "fedskel"), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    fedavg_row, fedskel_row = ({h: c.strip() for h, c in zip(header, line.strip("|").split("|"))} for line in table[2:4])
    assert (fedavg_row["strategy"], fedavg_row["r"], fedavg_row["local"], fedavg_row["uplink % FedAvg"]) == ("fedavg", "-", "none", "100.0%")
    assert (fedskel_row["strategy"], fedskel_row["r"]) == ("fedskel", "0.3") and float(fedskel_row["uplink % FedAvg"].rstrip("%")) < 35
    assert (fedavg_row["SetSkel steps / re-select"], fedskel_row["SetSkel steps / re-select"]) == ("-", "1 / 1")
    assert plot.stat().st_size > 0


def test_cli_seeds_make_one_run_per_seed_and_compare_them_as_one_group(digits_artifact, tmp_path, capsys):
    """--seeds 0,1 writes OUT/seed-0 and OUT/seed-1 (each seed's own partition and batches) and one table row
    with mean ± std; the run's closing lines name accuracy, uplink against FedAvg's, step speed-up and the plot."""
    out = tmp_path / "seeds"
    assert sim_main(["--artifact", str(digits_artifact), "--clients", "3", "--rounds", "2", "--local-steps", "2",
                     "--setskel-steps", "1", "--no-progress", "--seeds", "0,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    reports = [json.loads((out / f"seed-{seed}" / "report.json").read_text()) for seed in (0, 1)]
    assert [r["settings"]["seed"] for r in reports] == [0, 1]
    assert reports[0]["rounds"][0]["client_loss"] != reports[1]["rounds"][0]["client_loss"]
    rows = [line for line in printed.splitlines() if line.startswith("| seed-0 +1 |")]
    assert len(rows) == 1 and " ± " in rows[0]
    summary = reports[0]["summary"]
    assert summary["fedavg_uplink_bytes"] > summary["total_uplink_bytes"] > 0
    assert f"of FedAvg's {summary['fedavg_uplink_bytes'] / 1e6:.2f} MB" in printed and "x faster" in printed
    assert (out / "comparison.png").stat().st_size > 0 and f"plot: {out / 'seed-0' / 'curves.png'}" in printed


def test_cli_rejects_bad_input_with_a_reason(digits_artifact, tmp_path, capsys):
    common = ["--artifact", str(digits_artifact), "--rounds", "1", "--no-progress", "--out", str(tmp_path / "run")]
    assert sim_main([*common, "--ratio", "0.1"]) == 2
    assert "--ratio 0.1 but" in capsys.readouterr().err
    assert sim_main([*common, "--dataset", "mnist"]) == 2
    assert "pass data_dir" in capsys.readouterr().err
    assert sim_main([*common, "--clients", "2", "--local-steps", "1", "--setskel-steps", "2"]) == 2
    assert "setskel_steps must be in [1, steps=1]" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_build_report_keeps_wall_times_apart_from_the_numbers(fedskel_run):
    report = build_report({"ratio": 0.3}, fedskel_run)
    assert report["summary"]["final_mean_local_accuracy"] == fedskel_run["rounds"][-1]["mean_local_accuracy"]
    assert report["summary"]["total_downlink_bytes"] == sum(r["downlink_bytes"] for r in fedskel_run["rounds"])
    assert report["timings"]["steps"] == {"full": 0, "setskel": 9, "updateskel": 9}
    assert "step_ms" not in json.dumps({k: report[k] for k in ("settings", "clients", "rounds", "summary")})
