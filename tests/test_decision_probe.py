"""The float32 oracle that takes a build's own ReLU, Clip and max-pool decisions (decision_probe.py): the
probed function is the build's gradient function, its decisions replayed in float64 torch reproduce the
build's gradients, and the check fails when a decision is not the build's."""

import numpy as np
import pytest
import torch
from torch import nn

from fedskel.compiler import pipeline
from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.zoo import export_onnx
from fedskel.runtime import load

import decision_probe
from decision_probe import probe_calls, replayed_gradients, scaled_errors
from test_compiler_gradients import float64_twin, random_batch, random_skeleton

FLOAT32_TOLERANCE = 1e-4  # of each tensor's largest gradient (the issue's)


def _tie_prone():
    """Every probed kind, with overlapping max-pool windows (k3 s1 p1) and a stride-2 CONV."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).train()


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """(trainer of a float32 build with probed gradient functions, its torch module)."""
    module = _tie_prone()
    path = tmp_path_factory.mktemp("probe") / "tie-prone.onnx"
    path.write_bytes(export_onnx(module, (3, 12, 12), 4))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "load_training_module", decision_probe.probing(pipeline.load_training_module))
        compile_model(str(path), path.with_suffix(".fsk"), ratio=0.3)
    return load(path.with_suffix(".fsk")), module


@pytest.mark.parametrize("skeletal", [False, True])
def test_float32_gradients_equal_float64_on_the_builds_decisions(probed, skeletal):
    """The probed function is the build's gradient function (bit for bit), and float64 on its decisions
    reproduces its float32 gradients."""
    trainer, module = probed
    x, y = random_batch(trainer)
    skeleton = random_skeleton(trainer) if skeletal else None
    grads, probes = probe_calls(trainer, x, y, skeleton)  # asserts they are the build's gradients bit for bit
    assert {kind: len(values) for kind, values in probes.items()} == {"relu": 2, "clip": 1, "max_pool2d": 2}
    want, _ = replayed_gradients(float64_twin(module), probes, x, y, skeleton)
    errors = scaled_errors(grads, want)
    assert max(errors.values()) < FLOAT32_TOLERANCE, errors


def test_check_fails_on_decisions_not_the_builds(probed):
    """Reversing one ReLU's decisions moves the float64 answer far from the build's; a probe whose values are
    not the layer's input is refused by the matcher rather than used."""
    trainer, module = probed
    x, y = random_batch(trainer)
    grads, probes = probe_calls(trainer, x, y)
    reversed_relu = {**probes, "relu": [-probes["relu"][0], probes["relu"][1]]}
    with pytest.raises(AssertionError, match="nearest probe"):
        replayed_gradients(float64_twin(module), reversed_relu, x, y)  # negated values no longer match torch's input
    flipped = {**probes, "relu": [np.where(np.abs(p) >= 0.5 * np.abs(p).max(), -p, p) for p in probes["relu"]]}
    want, decisions = replayed_gradients(float64_twin(module), flipped, x, y, match_tolerance=3.0)  # matched, decisions reversed
    assert decisions.flipped >= 1
    assert max(scaled_errors(grads, want).values()) > 100 * FLOAT32_TOLERANCE
