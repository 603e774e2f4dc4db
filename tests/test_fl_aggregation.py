import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg

from fedskel.fl.aggregation import AggregationRules, aggregate, check_upload
from fedskel.fl.layout import ModelLayout
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


# ---- bounds on what one client can do ---------------------------------------------------------
def honest_and_attacker(rng, clients=10, shape=(6, 3)):
    """Nine honest whole-tensor updates around 1.0, and one attacker: huge values, a huge claimed num_examples."""
    honest = [Update({"w": Entry(1 + 0.1 * rng.standard_normal(shape))}, num_examples=int(rng.integers(10, 50)))
              for _ in range(clients - 1)]
    attacker = Update({"w": Entry(np.full(shape, 1e30))}, num_examples=2**62)
    return honest, attacker


@pytest.mark.parametrize("rule,flower", [("median", lambda r: aggregate_median(r)), ("trimmed-mean", lambda r: aggregate_trimmed_avg(r, 0.2))])
def test_robust_rules_are_flowers_and_one_attacker_of_ten_stays_inside_the_honest_spread(rule, flower):
    rng = np.random.default_rng(0)
    honest, attacker = honest_and_attacker(rng)
    updates = honest[:4] + [attacker] + honest[4:]
    global_params = {"w": np.zeros((6, 3), np.float32)}
    new = aggregate(global_params, updates, AggregationRules(rule=rule, trim=0.2))["w"]
    expected = flower([([u.entries["w"].values.astype(np.float64)], u.num_examples) for u in updates])[0]
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    low = np.min([u.entries["w"].values for u in honest], axis=0)
    high = np.max([u.entries["w"].values for u in honest], axis=0)
    assert (low <= new).all() and (new <= high).all()
    plain = aggregate(global_params, updates)["w"]
    assert np.abs(plain).min() > 1e29  # without a bound the attacker owns the model


def test_robust_rules_work_row_by_row_over_each_rows_senders():
    """Skeleton rows: each row's median is over the clients that sent that row, and is Flower's median of them."""
    rng = np.random.default_rng(1)
    global_params = {"w": np.full((5, 2), -7.0, np.float32)}
    sent_rows = [[0, 1, 2], [1, 2, 3], [0, 2, 3], [0, 1, 3], [2, 3, 0]]
    updates = [Update({"w": rows(rng.standard_normal((3, 2)), r, (5, 2))}, num_examples=1) for r in sent_rows]
    for rule, flower in (("median", aggregate_median), ("trimmed-mean", lambda r: aggregate_trimmed_avg(r, 0.3))):
        new = aggregate(global_params, updates, AggregationRules(rule=rule, trim=0.3))["w"]
        for row in range(4):
            senders = [u.entries["w"].values[list(u.entries["w"].rows).index(row)] for u in updates if row in u.entries["w"].rows]
            np.testing.assert_allclose(new[row], flower([([v.astype(np.float64)], 1) for v in senders])[0], rtol=1e-6)
        np.testing.assert_array_equal(new[4], [-7.0, -7.0])  # nobody sent row 4


def test_max_examples_and_max_share_bound_a_client_that_claims_all_the_data():
    rng = np.random.default_rng(2)
    honest, attacker = honest_and_attacker(rng)
    attacker = Update({"w": Entry(np.full((6, 3), 11.0))}, num_examples=2**62)
    global_params = {"w": np.ones((6, 3), np.float32)}
    plain = aggregate(global_params, honest + [attacker])["w"]
    assert np.allclose(plain, 11.0)  # 2**62 examples: the attacker's values exactly
    capped = aggregate(global_params, honest + [attacker], AggregationRules(max_examples=50))["w"]
    total = sum(u.num_examples for u in honest) + 50
    assert np.abs(capped - 1).max() <= 10 * 50 / total + 0.1 * 4  # at most its capped weight's pull
    shared = aggregate(global_params, honest + [attacker], AggregationRules(max_share=0.2))["w"]
    mean_honest = np.average([u.entries["w"].values for u in honest], axis=0, weights=[u.num_examples for u in honest])
    np.testing.assert_allclose(shared, 0.8 * mean_honest + 0.2 * 11.0, rtol=1e-5)  # exactly its share of 0.2


def test_max_share_that_no_weighting_can_meet_gives_equal_weights():
    global_params = {"w": np.zeros(2, np.float32)}
    updates = [Update({"w": Entry(np.full(2, v))}, num_examples=n) for v, n in ((1.0, 1), (4.0, 1000))]
    new = aggregate(global_params, updates, AggregationRules(max_share=0.3))["w"]  # 2 senders: 0.3 * 2 < 1
    np.testing.assert_allclose(new, [2.5, 2.5])


def test_clip_norm_bounds_how_far_one_update_moves_the_model():
    global_params = {"w": np.zeros((4, 2), np.float32), "b": np.zeros(3, np.float32)}
    small = Update({"w": Entry(np.full((4, 2), 0.1)), "b": Entry(np.zeros(3))}, num_examples=1)
    huge = Update({"w": Entry(np.full((4, 2), 1e6)), "b": Entry(np.full(3, 1e6))}, num_examples=1)
    new = aggregate(global_params, [small, huge], AggregationRules(clip_norm=1.0))
    moved = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in new.values()))
    assert moved <= (np.sqrt(8 * 0.01) + 1.0) / 2 + 1e-6  # the mean of two changes of norm <= 1
    same = aggregate(global_params, [small], AggregationRules(clip_norm=1.0))
    np.testing.assert_array_equal(same["w"], aggregate(global_params, [small])["w"])  # under the bound: untouched


def test_default_rules_are_bit_identical_to_the_plain_mean():
    rng = np.random.default_rng(3)
    global_params = {"w": rng.standard_normal((4, 2)).astype(np.float32)}
    updates = [Update({"w": rows(rng.standard_normal((2, 2)), rng.choice(4, 2, replace=False), (4, 2))}, num_examples=int(n))
               for n in rng.integers(1, 100, 6)]
    expected = global_params["w"].astype(np.float64).copy()
    for row in range(4):
        pairs = [(u.num_examples, u.entries["w"].values[list(u.entries["w"].rows).index(row)]) for u in updates if row in u.entries["w"].rows]
        if pairs:
            total = sum(n for n, _ in pairs)
            acc = np.zeros(2)
            for n, v in pairs:
                acc = acc + n * v.astype(np.float64)
            expected[row] = acc / total
    np.testing.assert_array_equal(aggregate(global_params, updates)["w"], expected.astype(np.float32))


@pytest.mark.parametrize("bad", [
    {"rule": "mode"}, {"trim": 0.5}, {"trim": -0.1}, {"max_examples": 0}, {"max_share": 0.0}, {"max_share": 1.5},
    {"clip_norm": 0.0}, {"clip_norm": float("inf")}, {"clip_norm": float("nan")},
])
def test_rules_refuse_meaningless_bounds(bad):
    with pytest.raises(ValueError):
        AggregationRules(**bad)


def test_an_upload_must_send_a_conv_bias_as_the_rows_of_its_weight():
    layout = ModelLayout.from_manifest({
        "params": [{"name": "c.weight", "shape": [4, 1, 3, 3], "dtype": "float32"}, {"name": "c.bias", "shape": [4], "dtype": "float32"}],
        "conv_layers": [{"weight": "c.weight", "bias": "c.bias", "out_channels": 4, "k": 2}],
    })
    weight = rows(np.ones((2, 1, 3, 3)), [0, 3], (4, 1, 3, 3))
    check_upload(Update({"c.weight": weight, "c.bias": rows(np.ones(2), [3, 0], (4,))}, 5), layout)
    cases = [
        (Update({"c.weight": weight, "c.bias": rows(np.ones(2), [0, 2], (4,))}, 5), r"bias rows \[0, 2\] are not the weight's rows \[0, 3\]"),
        (Update({"c.weight": weight, "c.bias": Entry(np.ones(4))}, 5), "bias rows all are not the weight's rows"),
        (Update({"c.weight": weight}, 5), "has its weight without the other"),
        (Update({"c.weight": weight, "c.bias": rows(np.ones(2), [0, 3], (4,))}, 0), "num_examples = 0"),
        (Update({"c.weight": weight, "c.bias": rows(np.ones(2), [0, 3], (4,)), "x": Entry(np.ones(1))}, 5), "unknown parameter 'x'"),
    ]
    for update, message in cases:
        with pytest.raises(ValueError, match=message):
            check_upload(update, layout)
