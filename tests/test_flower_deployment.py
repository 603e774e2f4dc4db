"""Flower's deployment engine for real: two FedSkel rounds over a SuperLink and two SuperNodes of different
skeleton ratios."""

import numpy as np
import pytest
from flower_federation import Federation

from fedskel.fl.client_data import split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.layout import ModelLayout
from fedskel.fl.simulator import Settings, simulate
from fedskel.fl.strategies import get_strategy
from fedskel.fl.wire import encode
from fedskel.runtime import load
from fedskel.runtime.evaluation import accuracy

SAME = ("client_loss", "loss", "local_accuracy", "mean_local_accuracy", "global_accuracy", "uplink_bytes", "downlink_bytes")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def wire_sizes(artifact):
    """Bytes of a FedSkel upload (skeleton rows) and of a whole-model one, whatever the values."""
    model = load(artifact)
    layout = ModelLayout.from_manifest(model.manifest)
    skeleton = {conv.weight: np.arange(conv.k) for conv in layout.conv_layers}
    skeleton_size = len(encode(get_strategy("fedskel", layout, local="none").client_update(model.params, skeleton, 1)))
    return skeleton_size, len(encode(get_strategy("fedavg", layout).client_update(model.params, None, 1)))


@pytest.mark.slow
def test_two_fedskel_rounds_on_a_superlink_and_two_supernodes(digits_artifact, artifact, digits, tmp_path):
    """A heterogeneous federation: node 1 is a weaker device whose node config names its own artifact, which
    trains skeletons of r = 0.1 where node 0's trains r = 0.3; the server aggregates the mixed k per row."""
    weak = artifact("digits-cnn", ratio=0.1, batch_size=16)
    # the classifier shared (local none), so the global model learns too; the run config's `local` reaches both ends
    training = {"local-steps": 50, "setskel-steps": 2, "lr": 0.05, "momentum": 0.9, "local": "none"}
    out = tmp_path / "run"
    with Federation(tmp_path) as federation:
        federation.start(num_nodes=2, node_configs=[{}, {"artifact": str(weak)}])
        run = federation.launch({"artifact": str(digits_artifact), "num-server-rounds": 2, "min-nodes": 2, "out": str(out), **training})
        rounds = federation.finish(run, out, timeout=420)["rounds"]
    assert [r["accepted"] for r in rounds] == [[0, 1], [0, 1]] and all(r["dropped"] == [] for r in rounds)

    clients = split_among_clients(digits, 2, "shards", seed=0)
    initial = load(digits_artifact)
    initial_local = np.mean([accuracy(initial, c.x_test, c.y_test) for c in clients])
    initial_global = accuracy(initial, np.concatenate([c.x_test for c in clients]), np.concatenate([c.y_test for c in clients]))
    assert rounds[-1]["mean_local_accuracy"] > initial_local + 0.3
    assert rounds[-1]["global_accuracy"] > initial_global + 0.3

    (skeleton_size, full_size), (weak_size, _) = wire_sizes(digits_artifact), wire_sizes(weak)
    assert weak_size < skeleton_size < 0.35 * full_size
    assert [r["uploads"] for r in rounds] == [[skeleton_size, weak_size]] * 2  # skeleton rows up from the first round
    assert [r["downlink_bytes"] for r in rounds] == [2 * full_size, skeleton_size + weak_size]  # whole model until a skeleton is known

    settings = Settings(rounds=2, local_steps=50, setskel_steps=2, lr=0.05, momentum=0.9, local="none")
    ours = simulate([digits_artifact, weak], clients, settings)
    for theirs, mine in zip(rounds, ours["rounds"]):
        assert {key: theirs[key] for key in SAME} == {key: mine[key] for key in SAME}
