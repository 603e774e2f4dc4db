import math

import numpy as np
import pytest

from fedskel.fl.layout import ModelLayout
from fedskel.fl.strategies import available, get_strategy, register
from fedskel.fl.strategies.base import Strategy
from fedskel.fl.update import Entry, Update
from fedskel.fl.wire import decode, encode


def manifest(convs, dense, ratio):
    """convs: name -> weight shape (with bias); dense: name -> weight shape (with bias)."""
    params, conv_layers = [], []
    for name, shape in {**convs, **dense}.items():
        params.append({"name": f"{name}.weight", "shape": list(shape), "dtype": "float32"})
        params.append({"name": f"{name}.bias", "shape": [shape[0]], "dtype": "float32"})
    for name, shape in convs.items():
        conv_layers.append(
            {"weight": f"{name}.weight", "bias": f"{name}.bias", "out_channels": shape[0], "k": math.ceil(ratio * shape[0])}
        )
    return {"params": params, "conv_layers": conv_layers}


# LeNet-5 as in the FedSkel/LG-FedAvg CIFAR code: the dense layers hold 95% of the weights.
LENET5 = ModelLayout.from_manifest(
    manifest({"conv1": (6, 3, 5, 5), "conv2": (16, 6, 5, 5)}, {"fc1": (120, 400), "fc2": (84, 120), "fc3": (10, 84)}, 0.3)
)
# A LeNet-like net with a small classifier (global pooling), where CONV weights dominate.
CONV_HEAVY = ModelLayout.from_manifest(manifest({"conv1": (32, 1, 3, 3), "conv2": (64, 32, 3, 3)}, {"fc": (10, 64)}, 0.3))
SMALL = ModelLayout.from_manifest(manifest({"conv": (4, 1, 3, 3)}, {"fc": (3, 4)}, 0.5))


def random_params(layout, seed):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(layout.shape(n)).astype(np.float32) for n in layout.names}


def skeleton_of(layout, seed):
    rng = np.random.default_rng(seed)
    return {c.weight: rng.choice(c.out_channels, c.k, replace=False) for c in layout.conv_layers}


def test_registry_lists_and_builds_strategies():
    assert available() == ["fedavg", "fedskel", "lg-fedavg"]
    strategy = get_strategy("fedskel", SMALL)
    assert isinstance(strategy, Strategy) and strategy.name == "fedskel" and strategy.layout is SMALL


def test_registry_rejects_unknown_names_and_bad_registrations():
    with pytest.raises(ValueError, match="unknown strategy 'fedprox'.*fedavg"):
        get_strategy("fedprox", SMALL)
    with pytest.raises(ValueError, match="already registered"):
        register("fedavg")(type("Other", (Strategy,), {"select": lambda self, p, s: {}}))
    with pytest.raises(TypeError, match="Strategy subclass"):
        register("not-a-strategy")(object)
    assert available() == ["fedavg", "fedskel", "lg-fedavg"]


def test_fedavg_sends_everything_both_ways():
    strategy = get_strategy("fedavg", SMALL)
    local, glob = random_params(SMALL, 1), random_params(SMALL, 2)

    up = strategy.client_update(local, skeleton_of(SMALL, 0), num_examples=10)
    assert up.num_examples == 10 and set(up.entries) == set(SMALL.names)
    assert all(e.rows is None for e in up.entries.values())

    merged = strategy.client_apply(local, strategy.server_message(glob, skeleton_of(SMALL, 0)))
    for name in SMALL.names:
        np.testing.assert_array_equal(merged[name], glob[name])


def test_fedskel_uploads_k_skeleton_rows_of_conv_and_whole_dense_layers():
    strategy = get_strategy("fedskel", LENET5, local="none")
    params, skeleton = random_params(LENET5, 1), skeleton_of(LENET5, 3)

    up = strategy.client_update(params, skeleton, num_examples=4)

    for conv in LENET5.conv_layers:
        for name in (conv.weight, conv.bias):
            entry = up.entries[name]
            assert len(entry.rows) == conv.k
            np.testing.assert_array_equal(entry.rows, skeleton[conv.weight])
            np.testing.assert_array_equal(entry.values, params[name][skeleton[conv.weight]])
    for name in ("fc1.weight", "fc1.bias", "fc3.weight"):
        assert up.entries[name].rows is None
        np.testing.assert_array_equal(up.entries[name].values, params[name])


def test_fedskel_download_overwrites_only_the_skeleton_rows():
    strategy = get_strategy("fedskel", SMALL, local="none")
    local, glob = random_params(SMALL, 1), random_params(SMALL, 2)
    skeleton = {"conv.weight": np.array([3, 0])}

    merged = strategy.client_apply(local, strategy.server_message(glob, skeleton))

    for name in ("conv.weight", "conv.bias"):
        np.testing.assert_array_equal(merged[name][[3, 0]], glob[name][[3, 0]])
        np.testing.assert_array_equal(merged[name][[1, 2]], local[name][[1, 2]])
    np.testing.assert_array_equal(merged["fc.weight"], glob["fc.weight"])
    np.testing.assert_array_equal(local["conv.weight"], random_params(SMALL, 1)["conv.weight"])  # input untouched


def test_fedskel_without_a_skeleton_exchanges_the_full_model():
    strategy = get_strategy("fedskel", SMALL, local="none")
    params = random_params(SMALL, 1)
    for message in (strategy.client_update(params, None, 3), strategy.server_message(params, None)):
        assert set(message.entries) == set(SMALL.names)
        assert all(e.rows is None for e in message.entries.values())


def test_fedskel_round_averages_each_filter_over_the_clients_that_sent_it():
    strategy = get_strategy("fedskel", SMALL, local="none")
    glob = random_params(SMALL, 0)
    a = {n: np.full(SMALL.shape(n), 1.0, np.float32) for n in SMALL.names}
    b = {n: np.full(SMALL.shape(n), 4.0, np.float32) for n in SMALL.names}
    ups = [
        strategy.client_update(a, {"conv.weight": np.array([0, 1])}, num_examples=1),
        strategy.client_update(b, {"conv.weight": np.array([1, 2])}, num_examples=2),
    ]

    new = strategy.aggregate(glob, [decode(encode(u), SMALL) for u in ups])

    w = new["conv.weight"]
    np.testing.assert_array_equal(w[0], 1.0)
    np.testing.assert_allclose(w[1], 3.0)  # (1*1 + 2*4) / 3
    np.testing.assert_array_equal(w[2], 4.0)
    np.testing.assert_array_equal(w[3], glob["conv.weight"][3])  # in nobody's skeleton
    np.testing.assert_allclose(new["fc.weight"], 3.0)


@pytest.mark.parametrize("layout", [LENET5, CONV_HEAVY], ids=["lenet5", "conv-heavy"])
def test_fedskel_upload_bytes_drop_by_exactly_the_unsent_conv_rows(layout):
    params, skeleton = random_params(layout, 1), skeleton_of(layout, 2)
    fedavg_bytes = len(encode(get_strategy("fedavg", layout).client_update(params, skeleton, 1)))
    fedskel_bytes = len(encode(get_strategy("fedskel", layout, local="none").client_update(params, skeleton, 1)))

    saved = 0
    for conv in layout.conv_layers:
        for name in (conv.weight, conv.bias):
            row_floats = int(np.prod(layout.shape(name)[1:]))
            unsent_floats = (conv.out_channels - conv.k) * row_floats
            saved += 4 * unsent_floats - 4 * (1 + conv.k)  # minus the row count and the indices
    assert fedavg_bytes - fedskel_bytes == saved


def test_fedskel_upload_at_r_0_3_is_much_smaller_when_conv_weights_dominate():
    params, skeleton = random_params(CONV_HEAVY, 1), skeleton_of(CONV_HEAVY, 2)
    fedavg_bytes = len(encode(get_strategy("fedavg", CONV_HEAVY).client_update(params, skeleton, 1)))
    fedskel_bytes = len(encode(get_strategy("fedskel", CONV_HEAVY).client_update(params, skeleton, 1)))
    assert fedskel_bytes < 0.45 * fedavg_bytes


@pytest.mark.parametrize(
    "skeleton, message",
    [
        ({"conv.weight": np.array([], np.int64)}, r"conv.weight: a skeleton of 0 channels"),
        ({"conv.weight": np.arange(5)}, r"conv.weight: a skeleton of 5 channels, the layer has 4"),
        ({"conv.weight": np.array([0, 4])}, r"conv.weight: skeleton index 4 out of range \[0, 4\)"),
        ({"conv.weight": np.array([1, 1])}, "conv.weight: skeleton index 1 appears more than once"),
        ({"conv.weight": np.array([0, 1]), "fc.weight": np.array([0, 1])}, r"unknown CONV layers \['fc.weight'\]"),
        ({}, "no indices for CONV layer conv.weight"),
        ({"conv.weight": np.array([0.0, 1.0])}, "conv.weight: skeleton indices must be a 1-D integer array"),
    ],
)
def test_fedskel_rejects_bad_skeletons(skeleton, message):
    """Any size from 1 to the layer's channels is a skeleton (devices of several ratios share a server)."""
    with pytest.raises(ValueError, match=message):
        get_strategy("fedskel", SMALL).client_update(random_params(SMALL, 0), skeleton, 1)


def test_lg_fedavg_keeps_conv_layers_local_by_default():
    strategy = get_strategy("lg-fedavg", LENET5)
    local, glob = random_params(LENET5, 1), random_params(LENET5, 2)

    up = strategy.client_update(local, None, 5)
    assert set(up.entries) == set(LENET5.names) - LENET5.conv_param_names

    merged = strategy.client_apply(local, strategy.server_message(glob, None))
    for name in LENET5.names:
        expected = local[name] if name in LENET5.conv_param_names else glob[name]
        np.testing.assert_array_equal(merged[name], expected)


def test_lg_fedavg_offers_both_splits_by_name():
    """'conv' (the paper's description) shares the classifier; 'head' (its code, FedSkel's reference) the CONVs."""
    params = random_params(LENET5, 0)
    conv = get_strategy("lg-fedavg", LENET5, local="conv").client_update(params, None, 1)
    head = get_strategy("lg-fedavg", LENET5, local="head").client_update(params, None, 1)
    assert set(conv.entries) == {f"{n}.{p}" for n in ("fc1", "fc2", "fc3") for p in ("weight", "bias")}
    assert set(head.entries) == LENET5.conv_param_names


def test_local_names_and_refusals():
    strategy = get_strategy("lg-fedavg", SMALL, local="fc.weight, fc.bias")
    assert set(strategy.client_update(random_params(SMALL, 0), None, 1).entries) == {"conv.weight", "conv.bias"}
    with pytest.raises(ValueError, match=r"unknown \['fc2.weight'\]"):
        get_strategy("lg-fedavg", SMALL, local="fc2.weight")
    with pytest.raises(ValueError, match="unknown \\['heads'\\]"):
        get_strategy("fedskel", SMALL, local="heads")
    with pytest.raises(ValueError, match="nothing would be shared"):
        get_strategy("fedavg", SMALL, local=",".join(SMALL.names))


def test_head_is_the_classifier_not_the_norms_of_the_last_conv():
    """A norm layer after the last CONV belongs to it: the head starts at the first dense weight."""
    layout = ModelLayout.from_manifest({
        "params": [
            {"name": n, "shape": s, "dtype": "float32"}
            for n, s in [("conv.weight", [4, 1, 3, 3]), ("bn.weight", [4]), ("bn.bias", [4]), ("fc.weight", [3, 4]), ("fc.bias", [3])]
        ],
        "conv_layers": [{"weight": "conv.weight", "bias": None, "out_channels": 4, "k": 2}],
    })
    assert layout.head_param_names == {"fc.weight", "fc.bias"}
    no_dense = ModelLayout.from_manifest(
        {"params": [{"name": "conv.weight", "shape": [4, 1, 3, 3], "dtype": "float32"}],
         "conv_layers": [{"weight": "conv.weight", "bias": None, "out_channels": 4, "k": 2}]}
    )
    with pytest.raises(ValueError, match="no dense"):
        no_dense.personal_params("head")


@pytest.mark.parametrize("local", ["none", "head", "conv"])
def test_fedskel_never_sends_or_overwrites_its_personal_layers(local):
    """Whatever the split, personal parameters neither travel nor change on download; FedSkel's
    default is the reference's (classifier local)."""
    strategy = get_strategy("fedskel", LENET5, local=local)
    personal = LENET5.personal_params(local)
    local_params, glob, skeleton = random_params(LENET5, 1), random_params(LENET5, 2), skeleton_of(LENET5, 3)
    assert not personal & set(strategy.client_update(local_params, skeleton, 5).entries)
    merged = strategy.client_apply(local_params, strategy.server_message(glob, skeleton))
    for name in personal:
        np.testing.assert_array_equal(merged[name], local_params[name])
    assert get_strategy("fedskel", LENET5).local_params == LENET5.head_param_names


def test_fedskel_at_full_ratio_is_lg_fedavg_with_a_local_head():
    full = ModelLayout.from_manifest(manifest({"conv": (4, 1, 3, 3)}, {"fc": (3, 4)}, 1.0))
    params, skeleton = random_params(full, 0), {"conv.weight": np.arange(4)}
    fedskel = get_strategy("fedskel", full).client_update(params, skeleton, 1)
    lg = get_strategy("lg-fedavg", full, local="head").client_update(params, skeleton, 1)
    assert set(fedskel.entries) == set(lg.entries)
    for name, entry in fedskel.entries.items():
        np.testing.assert_array_equal(entry.values[np.argsort(entry.rows)] if entry.rows is not None else entry.values, lg.entries[name].values)


def test_strategies_reject_parameters_that_do_not_match_the_layout():
    params = random_params(SMALL, 0)
    del params["fc.bias"]
    for name in available():
        with pytest.raises(ValueError, match=r"missing \['fc.bias'\]"):
            get_strategy(name, SMALL).client_update(params, None, 1)
    wrong = {**random_params(SMALL, 0), "fc.weight": np.zeros((4, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(4, 3\)"):
        get_strategy("fedavg", SMALL).server_message(wrong, None)


def test_client_apply_rejects_a_message_for_another_model():
    strategy = get_strategy("fedavg", SMALL)
    message = Update({"fc.weight": Entry(np.zeros((2, 2)))}, 0)
    with pytest.raises(ValueError, match=r"'fc.weight' as shape \(2, 2\)"):
        strategy.client_apply(random_params(SMALL, 0), message)


def test_upload_is_a_snapshot_not_a_view_of_the_training_params():
    params = random_params(SMALL, 0)
    up = get_strategy("fedavg", SMALL).client_update(params, None, 1)
    params["fc.weight"] += 1
    np.testing.assert_array_equal(up.entries["fc.weight"].values, random_params(SMALL, 0)["fc.weight"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["conv_layers"][0].update(out_channels=5), "out_channels 5"),
        (lambda m: m["conv_layers"][0].update(bias="missing.bias"), "unknown parameter 'missing.bias'"),
        (lambda m: m["conv_layers"][0].update(k=0), r"k=0 outside \[1, 4\]"),
        (lambda m: m["conv_layers"][0].update(bias="fc.bias"), "bias 'fc.bias' has shape"),
        (lambda m: m["params"][0].update(dtype="float64"), "float32 only"),
        (lambda m: m["params"].append(dict(m["params"][0])), "twice"),
        (lambda m: m.pop("conv_layers"), "no 'conv_layers'"),
        (lambda m: m["params"][0].pop("shape"), "lacks the field 'shape'"),
    ],
)
def test_layout_rejects_inconsistent_manifests(edit, message):
    bad = manifest({"conv": (4, 1, 3, 3)}, {"fc": (3, 4)}, 0.5)
    edit(bad)
    with pytest.raises(ValueError, match=message):
        ModelLayout.from_manifest(bad)
