"""Flower's simulation engine (in-process run_simulation) against our simulator: same seed, same run."""

import json

import pytest
from flwr.simulation import run_simulation

from fedskel.fl.client_data import split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.flower.client_app import make_client_app
from fedskel.fl.flower.server_app import make_server_app
from fedskel.fl.simulator import Settings, simulate

CLIENTS = 3
SAME = ("client_loss", "loss", "local_accuracy", "mean_local_accuracy", "global_accuracy", "uplink_bytes", "downlink_bytes")


@pytest.mark.slow
@pytest.mark.parametrize("strategy,local", [("fedskel", {}), ("fedavg", {}), ("lg-fedavg", {}), ("lg-fedavg", {"local": "head"})])
def test_flower_simulation_reproduces_the_simulator_exactly(digits_artifact, tmp_path, strategy, local):
    """Every number of round 2 depends on round 1's global model and on each client's saved state.
    ``local``: the personal layers, where not the strategy's default (lg-fedavg's other split, by name)."""
    settings = Settings(strategy=strategy, rounds=2, local_steps=3, setskel_steps=1, seed=3, **local)
    run_config = {
        "artifact": str(digits_artifact), "strategy": strategy, "num-server-rounds": 2, "local-steps": 3,
        "setskel-steps": 1, "seed": 3, "min-nodes": CLIENTS, "out": str(tmp_path), **local,
    }
    run_simulation(
        server_app=make_server_app(run_config), client_app=make_client_app(run_config), num_supernodes=CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    flower = json.loads((tmp_path / "report.json").read_text())
    ours = simulate(digits_artifact, split_among_clients(load_dataset("digits"), CLIENTS, "shards", seed=3), settings)

    assert flower["config"]["engine"] == "flower" and flower["settings"]["strategy"] == strategy
    assert flower["settings"]["local"] == ours["settings"]["local"] == local.get("local", ours["settings"]["local"])
    assert len(flower["rounds"]) == 2
    for theirs, mine in zip(flower["rounds"], ours["rounds"]):
        assert theirs["accepted"] == mine["sampled"] == list(range(CLIENTS)) and theirs["dropped"] == []
        assert {key: theirs[key] for key in SAME} == {key: mine[key] for key in SAME}
    assert [c["train"] for c in flower["clients"]] == [c["train"] for c in ours["clients"]]
