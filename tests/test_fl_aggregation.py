import numpy as np
import pytest

from fedskel.fl.aggregation import aggregate
from fedskel.fl.update import Entry, Update


def rows(values, idx, shape):
    return Entry(np.array(values, dtype=np.float32), np.array(idx), shape)


def test_each_row_is_the_weighted_mean_of_its_senders():
    global_params = {"w": np.arange(8, dtype=np.float32).reshape(4, 2), "untouched": np.full(3, 7.0, np.float32)}
    a = Update({"w": rows([[1, 1], [2, 2]], [0, 1], (4, 2))}, num_examples=1)
    b = Update({"w": rows([[10, 10], [20, 20]], [1, 2], (4, 2))}, num_examples=3)
    c = Update({"w": Entry(np.full((4, 2), 100.0))}, num_examples=2)

    new = aggregate(global_params, [a, b, c])

    expected = np.array(
        [
            [(1 * 1 + 2 * 100) / 3] * 2,  # a and c
            [(1 * 2 + 3 * 10 + 2 * 100) / 6] * 2,  # a, b and c
            [(3 * 20 + 2 * 100) / 5] * 2,  # b and c
            [100.0] * 2,  # c alone
        ]
    )
    np.testing.assert_allclose(new["w"], expected, rtol=1e-6)
    np.testing.assert_array_equal(new["untouched"], global_params["untouched"])
    assert new["w"].dtype == np.float32


def test_a_row_nobody_sent_keeps_its_global_value():
    global_params = {"w": np.arange(8, dtype=np.float32).reshape(4, 2)}
    a = Update({"w": rows([[1, 1]], [0], (4, 2))}, num_examples=5)
    b = Update({"w": rows([[3, 3]], [2], (4, 2))}, num_examples=1)

    new = aggregate(global_params, [a, b])

    np.testing.assert_array_equal(new["w"], [[1, 1], [2, 3], [3, 3], [6, 7]])


def test_whole_tensor_entries_are_fedavg_including_scalars():
    global_params = {"w": np.zeros((2, 3), np.float32), "s": np.array(0.0, np.float32)}
    a = Update({"w": Entry(np.ones((2, 3))), "s": Entry(np.array(1.0))}, num_examples=1)
    b = Update({"w": Entry(np.full((2, 3), 4.0)), "s": Entry(np.array(4.0))}, num_examples=3)

    new = aggregate(global_params, [a, b])

    np.testing.assert_allclose(new["w"], np.full((2, 3), 13 / 4))
    assert new["s"].shape == () and new["s"] == pytest.approx(13 / 4)


def test_no_updates_changes_nothing():
    global_params = {"w": np.arange(4, dtype=np.float32)}
    new = aggregate(global_params, [])
    np.testing.assert_array_equal(new["w"], global_params["w"])
    assert new["w"] is not global_params["w"]


def test_inputs_are_not_mutated():
    global_params = {"w": np.arange(6, dtype=np.float32).reshape(3, 2)}
    update = Update({"w": rows([[9, 9]], [1], (3, 2))}, num_examples=2)
    before_global, before_values = global_params["w"].copy(), update.entries["w"].values.copy()

    new = aggregate(global_params, [update])
    new["w"][:] = -1

    np.testing.assert_array_equal(global_params["w"], before_global)
    np.testing.assert_array_equal(update.entries["w"].values, before_values)


@pytest.mark.parametrize(
    "update, message",
    [
        (Update({"nope": Entry(np.zeros(2))}, 1), "unknown parameter 'nope'"),
        (Update({"w": Entry(np.zeros((2, 2)))}, 1), r"shape \(2, 2\)"),
        (Update({"w": Entry(np.zeros((3, 2)))}, 0), "num_examples=0"),
    ],
)
def test_rejects_updates_that_do_not_fit(update, message):
    with pytest.raises(ValueError, match=message):
        aggregate({"w": np.zeros((3, 2), np.float32)}, [update])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(values=np.zeros((2, 2)), rows=np.array([0, 0]), shape=(4, 2)), "row index 0 appears more than once"),
        (dict(values=np.zeros((1, 2)), rows=np.array([4]), shape=(4, 2)), r"row index 4 out of range \[0, 4\)"),
        (dict(values=np.zeros((1, 2)), rows=np.array([0])), "needs the full tensor shape"),
        (dict(values=np.zeros((2, 2)), rows=np.array([0]), shape=(4, 2)), "need values of shape"),
        (dict(values=np.zeros((0, 2)), rows=np.array([], np.int64), shape=(4, 2)), "empty"),
        (dict(values=np.zeros(()), rows=np.array([0]), shape=()), "scalar"),
    ],
)
def test_entry_rejects_inconsistent_rows(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Entry(**kwargs)


def test_entry_is_a_snapshot_of_the_senders_array():
    params = np.zeros(3, np.float32)
    entry = Entry(params)
    params[:] = 5
    np.testing.assert_array_equal(entry.values, 0)
