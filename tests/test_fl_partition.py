import numpy as np
import pytest

from fedskel.fl.partition import local_test_split, partition

LABELS = np.random.default_rng(0).integers(0, 10, 800)
TEST_LABELS = np.random.default_rng(1).integers(0, 10, 300)


def assert_disjoint_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "a sample is in two partitions"
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def test_shards_give_each_client_two_classes_and_use_every_sample():
    parts = partition(LABELS, 10, "shards", seed=0)
    assert_disjoint_cover(parts, len(LABELS))
    for client, idx in enumerate(parts):
        np.testing.assert_array_equal(np.unique(LABELS[idx]), sorted({client, (client + 1) % 10}))


def test_shards_class_count_option():
    parts = partition(LABELS, 10, "shards", seed=0, num_classes_per_partition=3)
    assert all(len(np.unique(LABELS[idx])) == 3 for idx in parts)


def test_dirichlet_partitions_are_disjoint_and_skewed():
    parts = partition(LABELS, 8, "dirichlet", seed=0, alpha=0.3, min_partition_size=5)
    assert_disjoint_cover(parts, len(LABELS))
    # Small alpha: some client's largest class share is far above the IID 10%.
    assert max(np.bincount(LABELS[idx]).max() / len(idx) for idx in parts) > 0.3


def test_iid_partitions_are_equal_sized_and_mixed():
    parts = partition(LABELS, 8, "iid", seed=0)
    assert_disjoint_cover(parts, len(LABELS))
    assert {len(idx) for idx in parts} == {100}
    assert all(len(np.unique(LABELS[idx])) == 10 for idx in parts)
    assert not any(np.array_equal(idx, np.arange(idx[0], idx[0] + 100)) for idx in parts), "parts are not shuffled"


@pytest.mark.parametrize("scheme, opts", [("shards", {}), ("dirichlet", {"alpha": 0.5}), ("iid", {})])
def test_same_seed_same_split_other_seed_other_split(scheme, opts):
    first = partition(LABELS, 10, scheme, seed=7, **opts)
    again = partition(LABELS, 10, scheme, seed=7, **opts)
    other = partition(LABELS, 10, scheme, seed=8, **opts)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize(
    "args, opts, message",
    [
        ((LABELS, 5, "pathological"), {}, "unknown partition scheme 'pathological'"),
        ((LABELS, 0, "iid"), {}, "num_clients=0"),
        ((LABELS, 5, "dirichlet"), {}, "needs alpha"),
        ((LABELS, 5, "iid"), {"alpha": 1.0}, r"takes no options \['alpha'\]"),
        ((LABELS.astype(float), 5, "iid"), {}, "integer"),
        ((np.array([0, -1, 2]), 2, "iid"), {}, "non-negative"),
    ],
)
def test_partition_rejects_bad_arguments(args, opts, message):
    with pytest.raises(ValueError, match=message):
        partition(*args, seed=0, **opts)


def test_local_test_split_follows_each_clients_classes():
    parts = partition(LABELS, 10, "shards", seed=0)
    client_labels = [LABELS[idx] for idx in parts]

    tests = local_test_split(TEST_LABELS, client_labels, seed=0)

    assert_disjoint_cover(tests, len(TEST_LABELS))  # every class is trained on by someone here
    for idx, train in zip(tests, client_labels):
        assert set(TEST_LABELS[idx]) == set(train)
    # Class c is shared by clients c-1 and c with the same number of training samples
    # each (up to one), so its test samples are split in half.
    for c in range(10):
        counts = [np.sum(TEST_LABELS[tests[client]] == c) for client in ((c - 1) % 10, c)]
        assert abs(counts[0] - counts[1]) <= 1


def test_local_test_split_is_proportional_seeded_and_drops_unused_classes():
    test_labels = np.array([0] * 10 + [1] * 4 + [2] * 5)
    client_labels = [np.array([0] * 3 + [1]), np.array([0] * 1 + [1])]

    tests = local_test_split(test_labels, client_labels, seed=3)

    assert [np.sum(test_labels[t] == 0) for t in tests] == [8, 2]  # 10 split 3:1, largest remainder
    assert [np.sum(test_labels[t] == 1) for t in tests] == [2, 2]
    assert not any(np.isin(t, np.flatnonzero(test_labels == 2)).any() for t in tests)
    again = local_test_split(test_labels, client_labels, seed=3)
    other = local_test_split(test_labels, client_labels, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(tests, again))
    assert not all(np.array_equal(a, b) for a, b in zip(tests, other))
