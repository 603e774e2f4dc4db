import numpy as np
import pytest

from fedskel.fl.data import load_dataset
from fedskel.runtime import load, top_k_skeleton
from fedskel.runtime.client import Client, LocalTraining, TrainingDiverged
from fedskel.runtime.evaluation import accuracy


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def make_client(artifact, digits, samples=64, seed=0, **training):
    options = {"steps": 2, "lr": 0.05, **training}
    return Client(load(artifact), digits.x_train[:samples], digits.y_train[:samples], LocalTraining(**options), seed=seed)


def test_full_training_takes_only_full_backward_steps(digits_artifact, digits):
    client = make_client(digits_artifact, digits, steps=3)
    before = client.params
    report = client.train_round()
    assert [len(report.step_seconds[p]) for p in ("full", "setskel", "updateskel")] == [3, 0, 0]
    assert client.skeleton is None and not report.selected_skeleton
    assert report.num_examples == 64 and np.isfinite(report.loss)
    assert all(not np.array_equal(before[n], value) for n, value in client.params.items())


def test_setskel_picks_the_top_k_of_the_importance_it_accumulated(digits_artifact, digits):
    # one batch of data: every step sees the same 16 samples, so a second trainer can replay the steps
    client = make_client(digits_artifact, digits, samples=16, steps=3, skeleton=True, setskel_steps=2, momentum=0.0)
    report = client.train_round()
    assert [len(report.step_seconds[p]) for p in ("full", "setskel", "updateskel")] == [0, 2, 1]

    replay = load(digits_artifact)
    x, y = digits.x_train[:16], digits.y_train[:16]
    importance = {}
    for _ in range(2):
        replay.train_step(x, y, lr=0.05, momentum=0.0)
        for name, value in replay.last_importance.items():
            importance[name] = importance.get(name, 0.0) + value.astype(np.float64)
    expected = top_k_skeleton(importance, replay.conv_layers)
    assert client.skeleton.keys() == expected.keys()
    for name, channels in expected.items():
        np.testing.assert_array_equal(client.skeleton[name], channels)
        assert len(channels) == replay.skeleton_layers[name][1]


def test_updateskel_moves_only_skeleton_filters_of_conv_layers(digits_artifact, digits):
    client = make_client(digits_artifact, digits, steps=2, skeleton=True, setskel_steps=1, reselect_every=None,
                         momentum=0.0, weight_decay=0.0)
    client.train_round()  # selects the skeleton
    before = client.params
    report = client.train_round()  # UpdateSkel only: the skeleton is selected once
    assert not report.selected_skeleton and len(report.step_seconds["updateskel"]) == 2
    after = client.params
    for layer in client.trainer.conv_layers:
        rows = client.skeleton[layer["weight"]]
        others = np.setdiff1d(np.arange(layer["out_channels"]), rows)
        for name in (layer["weight"], layer["bias"]):
            np.testing.assert_array_equal(after[name][others], before[name][others])
            assert not np.array_equal(after[name][rows], before[name][rows])
    assert not np.array_equal(after["9.weight"], before["9.weight"])  # the classifier trains normally


@pytest.mark.parametrize(
    "every, selections",
    [(1, [True, True, True, True]), (2, [True, False, True, False]), (None, [True, False, False, False])],
)
def test_reselection_policy(digits_artifact, digits, every, selections):
    client = make_client(digits_artifact, digits, steps=2, skeleton=True, setskel_steps=1, reselect_every=every)
    reports = [client.train_round() for _ in selections]
    assert [r.selected_skeleton for r in reports] == selections
    assert [len(r.step_seconds["setskel"]) for r in reports] == [int(s) for s in selections]
    assert client.rounds_trained == len(selections)


def test_same_seed_same_batches_other_seed_other_batches(digits_artifact, digits):
    clients = [make_client(digits_artifact, digits, seed=s) for s in (3, 3, 4)]
    for client in clients:
        client.train_round()
    a, b, c = (client.params["0.weight"] for client in clients)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_resumed_client_goes_on_exactly_like_the_original(digits_artifact, digits):
    original = make_client(digits_artifact, digits, samples=40, steps=3, skeleton=True, setskel_steps=1, reselect_every=2)
    original.train_round()
    restarted = make_client(digits_artifact, digits, samples=40, seed=99, steps=3, skeleton=True, setskel_steps=1, reselect_every=2)
    restarted.resume(original.checkpoint())
    reports = [client.train_round() for client in (original, restarted)]
    assert [r.selected_skeleton for r in reports] == [False, False] and reports[0].loss == reports[1].loss
    for name, value in original.params.items():
        np.testing.assert_array_equal(restarted.params[name], value)
    for name, rows in original.skeleton.items():
        np.testing.assert_array_equal(restarted.skeleton[name], rows)


def test_resume_rejects_a_checkpoint_of_other_data(digits_artifact, digits):
    checkpoint = make_client(digits_artifact, digits, samples=40).checkpoint()
    checkpoint["batch_order"] = np.array([3, 45])
    with pytest.raises(ValueError, match="does not index this client's 40 samples"):
        make_client(digits_artifact, digits, samples=40).resume(checkpoint)


def test_evaluate_pads_the_last_partial_batch(digits_artifact, digits):
    trainer = load(digits_artifact)
    x = digits.x_test[:20]
    first = trainer.predict(x[:16]).argmax(axis=1)
    last = trainer.predict(np.concatenate([x[16:], x[:12]])).argmax(axis=1)[:4]
    labels = np.concatenate([first, last])
    assert accuracy(trainer, x, labels) == 1.0
    wrong = labels.copy()
    wrong[16:] = (wrong[16:] + 1) % 10
    assert accuracy(trainer, x, wrong) == 0.8
    client = Client(trainer, digits.x_train[:16], digits.y_train[:16], LocalTraining(steps=1, lr=0.1))
    assert client.evaluate(x, wrong) == 0.8


def test_evaluate_rejects_mismatched_or_empty_sets(digits_artifact, digits):
    trainer = load(digits_artifact)
    with pytest.raises(ValueError, match="20 samples but 19 labels"):
        accuracy(trainer, digits.x_test[:20], digits.y_test[:19])
    with pytest.raises(ValueError, match="empty set"):
        accuracy(trainer, digits.x_test[:0], digits.y_test[:0])
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\) do not match the compiled \(1, 8, 8\)"):
        accuracy(trainer, np.zeros((3, 1, 4, 4), np.float32), np.zeros(3, np.int64))


def test_diverging_training_raises_instead_of_returning_a_broken_model(digits_artifact, digits):
    client = Client(load(digits_artifact), digits.x_train[:32] * np.float32(1e37), digits.y_train[:32],
                    LocalTraining(steps=3, lr=0.1))
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step \d of round 1"):
        client.train_round()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": 0, "lr": 0.1}, "steps must be >= 1"),
        ({"steps": 2, "lr": -0.1}, "lr must be a positive number"),
        ({"steps": 2, "lr": float("nan")}, "lr must be a positive number"),
        ({"steps": 2, "lr": 0.1, "skeleton": True, "setskel_steps": 3}, r"setskel_steps must be in \[1, steps=2\]"),
        ({"steps": 2, "lr": 0.1, "skeleton": True, "setskel_steps": 0}, r"setskel_steps must be in \[1, steps=2\]"),
        ({"steps": 2, "lr": 0.1, "skeleton": True, "reselect_every": 0}, "reselect_every must be >= 1"),
    ],
)
def test_local_training_rejects_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        LocalTraining(**options)


@pytest.mark.parametrize(
    "make_data, message",
    [
        (lambda x, y: (x.astype(np.float64), y), "must be float32 of shape"),
        (lambda x, y: (x[:, :, :4], y), r"must be float32 of shape \(N, 1, 8, 8\)"),
        (lambda x, y: (x, y[:-1]), "labels must be 10 integers"),
        (lambda x, y: (x, y.astype(np.float32)), "labels must be 10 integers"),
        (lambda x, y: (x, y + 5), r"labels must be in \[0, 10\)"),
        (lambda x, y: (x[:0], y[:0]), "at least one training sample"),
        (lambda x, y: (np.where(np.arange(10)[:, None, None, None] == 3, np.nan, x).astype(np.float32), y), "NaN or Inf"),
    ],
)
def test_client_rejects_bad_data(digits_artifact, digits, make_data, message):
    x, y = make_data(digits.x_train[:10], digits.y_train[:10])
    with pytest.raises(ValueError, match=message):
        Client(load(digits_artifact), x, y, LocalTraining(steps=1, lr=0.1))
