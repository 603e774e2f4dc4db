"""Time to accuracy, best accuracy and seed groups (fl/metrics.py): the numbers a user compares runs by."""

import pytest

from fedskel.fl.metrics import client_seconds_per_round, group_by_settings, mean_std, rounds_to_target, targets_summary


@pytest.mark.parametrize(
    "curve, target, want",
    [
        ([0.5, 0.96, 0.97], 0.95, 2),
        ([0.96, 0.5, 0.96, 0.97], 0.95, 3),  # touching the target once does not count
        ([0.96, 0.97, 0.94], 0.95, None),  # falling below at the end: not reached
        ([None, 0.96, None, 0.99], 0.95, 4),  # a round without a measurement is not above it
        ([0.95], 0.95, 1),
        ([], 0.95, None),
    ],
)
def test_rounds_to_target_counts_until_accuracy_stays_above(curve, target, want):
    assert rounds_to_target(curve, target) == want


def test_client_seconds_sum_every_step_of_every_client_until_the_round_reached():
    timings = [{"step_ms": {"setskel": [100.0, 200.0], "updateskel": [50.0], "full": []}},
               {"step_ms": {"setskel": [], "updateskel": [25.0, 25.0], "full": [500.0]}},
               {"step_ms": {"setskel": [1000.0], "updateskel": [], "full": []}}]
    seconds = client_seconds_per_round(timings)
    assert seconds == pytest.approx([0.35, 0.55, 1.0])
    rounds, spent = targets_summary([0.5, 0.92, 0.97], seconds)
    assert rounds == {"0.9": 2, "0.95": 3}
    assert spent == pytest.approx({"0.9": 0.9, "0.95": 1.9})


def test_runs_equal_but_for_the_seed_form_one_group():
    def report(seed, lr, strategy="fedskel"):
        return {"config": {"model": "m", "seed": seed}, "settings": {"strategy": strategy, "lr": lr, "seed": seed}}

    runs = {"a0": report(0, 0.1), "b0": report(0, 0.05), "a1": report(1, 0.1), "c0": report(0, 0.1, "fedavg")}
    groups = group_by_settings(list(runs), list(runs.values()))
    assert [names for names, _ in groups] == [["a0", "a1"], ["b0"], ["c0"]]


def test_mean_std_over_seeds_ignores_missing_values():
    assert mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert mean_std([4.0]) == (4.0, None, 1)
    assert mean_std([None]) == (None, None, 0)
