"""torchvision's classification models: their skeleton backward is k/Cout of the full one per CONV (the
training graph's IR, seconds per model), they compile, and their gradients equal torch autograd.

Random weights, 10 classes, 3x32x32 (regnet 3x64x64: see INPUT), batch 4, float64, exported the way
``fedskel-compile torchvision:NAME`` does; float32 builds at 3x64x64, batch 8 (FLOAT32_INPUT).  Dropouts are
compared with the masks the compiled model draws for a given seed (test_dropout.py).  Most models take a
minute or more to compile on two cores, even with LLVM at opt level 0 (what LLVM's optimisations may change is
checked once in test_targets.py), so all but one run in the slow step; scripts/setup.sh installs torchvision
(without it they are skipped).
"""

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from fedskel.compiler import pipeline
from fedskel.compiler.errors import CompileError
from fedskel.compiler.onnx_loader import load_onnx
from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.torchvision_zoo import MODELS, build_torchvision_model, export_torchvision_onnx
from fedskel.compiler.training_graph import build_training_module
from fedskel.runtime import load

from decision_probe import probe_calls, probing, replayed_gradients, scaled_errors
from onnx_models import as_float64
from test_compiler_gradients import (assert_as_accurate_as_torch, assert_grads_close, float64_twin,
                                     random_batch, random_skeleton)
from test_dropout import with_dropout_masks
from test_skeleton_pass import backward_convs, conv_macs
from torch_oracle import nn_conv_outputs, torch_gradients, with_exact_hard_activations

SEED = 7
FAST_BUILD = 0  # LLVM opt level: this checks the graph's gradients, and level 0 compiles them 3-5x faster
# regnet_x_400mf at 32x32 ends on 1x1 maps, so its last BatchNorms normalise N*H*W = 4 values and amplify
# rounding: torch's own float64 gradients move by up to 8.7e-9 (relative) when the batch is merely permuted,
# so at 1e-9 that input tests torch's summation order, not ours.  At 64x64 (16 values) it agrees to 4e-13.
INPUT = {"regnet_x_400mf": (3, 64, 64)}
STATISTICS_TOLERANCE = 1e-9  # float64: rounding level (the issue asks for 1e-6)
# float32 builds (3x64x64, batch 8: at 32x32, batch 4, the last BatchNorms see 4 values and torch's own float32
# gradients are 0.5% to 160% off float64) are judged on the build's own ReLU, ReLU6 and max-pool decisions
# (decision_probe.py): so many of those inputs lie within float32 rounding of their threshold that torch's own
# float32 gradients are up to 27% (densenet121), 20% (googlenet) and 17% (regnet_x_400mf) off float64, which
# leaves no plain float32 answer to hold a build to.  float64 and torch float32 both replay the build's
# decisions; per tensor the build must be within 4x torch float32's error (test_compiler_gradients' standard)
# and within the 1e-4 of the tensor's largest gradient.
FLOAT32_INPUT = ((3, 64, 64), 8)
FLOAT32_TOLERANCE = 1e-4  # the issue's, of each tensor's largest gradient


# squeezenet1_1 compiles in ~15 s at opt level 0: the default run checks one whole model's compiled gradients
# (float64 and float32); the slow step checks the other ten.
DEFAULT_RUN_MODEL = "squeezenet1_1"
SLOW_BUT_ONE = [name if name == DEFAULT_RUN_MODEL else pytest.param(name, marks=pytest.mark.slow) for name in MODELS]


def _torchvision_or_skip(name):
    try:
        return build_torchvision_model(name, 10)
    except CompileError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", MODELS)
def test_skeleton_backward_macs_are_k_over_cout_per_conv(tmp_path, name):
    """Every CONV's weight gradient and input gradient in the skeleton function costs exactly k/Cout of its
    full form: op by op (both functions emit the backward in the same order), not just in total."""
    _torchvision_or_skip(name)
    path = tmp_path / f"{name}.onnx"
    export_torchvision_onnx(name, 10, (3, 32, 32), 4, path)
    training = build_training_module(load_onnx(path), 0.3)
    full = backward_convs(training.module["gradients"])
    skeleton = backward_convs(training.module["gradients_skel"])
    layers = [(layer["out_channels"], layer["k"]) for layer in training.conv_layers]
    assert len(full) == len(skeleton) == 2 * len(layers) - 1  # a dW per CONV, a dX for all but the first
    pairs = [(cout, k) for (_, cout), (_, k) in zip(full, skeleton)]
    assert Counter(pairs[:len(layers)]) == Counter(layers)  # one weight gradient per CONV layer
    assert all(k < cout for cout, k in layers)
    for (full_op, cout), (skeleton_op, k) in zip(full, skeleton):
        assert (cout, k) in layers
        assert conv_macs(skeleton_op) * cout == conv_macs(full_op) * k


@pytest.mark.parametrize("name", SLOW_BUT_ONE)
def test_torchvision_gradients_equal_torch(tmp_path, name):
    _torchvision_or_skip(name)
    path = tmp_path / f"{name}.onnx"
    module = export_torchvision_onnx(name, 10, INPUT.get(name, (3, 32, 32)), 4, path)
    onnx.save(as_float64(onnx.load(str(path))), str(path))
    compile_model(str(path), tmp_path / f"{name}.fsk", ratio=0.3, opt_level=FAST_BUILD)
    trainer = load(tmp_path / f"{name}.fsk")
    x, y = random_batch(trainer)
    reference = with_dropout_masks(with_exact_hard_activations(module.double()), x, SEED).train()
    statistics = copy.deepcopy(reference)  # untouched: every train-mode forward below moves running statistics
    _, want = torch_gradients(reference, nn_conv_outputs, x, y)
    assert_grads_close(trainer.gradients(x, y, seed=SEED), want)
    skeleton = random_skeleton(trainer)
    _, want_skel = torch_gradients(reference, nn_conv_outputs, x, y, skeleton)
    assert_grads_close(trainer.gradients(x, y, skeleton, seed=SEED), want_skel)
    assert_running_statistics_equal_torch(trainer, statistics, x, y)


@pytest.mark.parametrize("name", SLOW_BUT_ONE)
def test_torchvision_float32_gradients_as_accurate_as_torch_on_the_builds_decisions(tmp_path, monkeypatch, name):
    _torchvision_or_skip(name)
    path = tmp_path / f"{name}.onnx"
    module = export_torchvision_onnx(name, 10, *FLOAT32_INPUT, path)
    monkeypatch.setattr(pipeline, "load_training_module", probing(pipeline.load_training_module))
    compile_model(str(path), tmp_path / f"{name}.fsk", ratio=0.3, opt_level=FAST_BUILD)
    trainer = load(tmp_path / f"{name}.fsk")
    x, y = random_batch(trainer)
    exact = with_dropout_masks(with_exact_hard_activations(float64_twin(module)), x.astype(np.float64), SEED).train()
    single = with_dropout_masks(with_exact_hard_activations(module), x, SEED).train()
    for skeleton in (None, random_skeleton(trainer)):
        got, probes = probe_calls(trainer, x, y, skeleton, seed=SEED)  # the build's own gradients, bit for bit
        want, _ = replayed_gradients(exact, probes, x, y, skeleton)
        torch32, _ = replayed_gradients(single, probes, x, y, skeleton)
        assert_as_accurate_as_torch(got, torch32, want)
        errors = scaled_errors(got, want)
        assert max(errors.values()) < FLOAT32_TOLERANCE, max(errors.items(), key=lambda item: item[1])


def assert_running_statistics_equal_torch(trainer, module, x, y):
    """A training step moves every BatchNorm's running mean and variance as torch's train-mode forward does.

    Compared as changes from the initial values, per tensor relative to its largest change (mnasnet's
    BatchNorms keep momentum 3e-4, so the values themselves hardly move) with the gradients' noise floor:
    a BatchNorm after a bias-free 1x1 CONV of a BatchNorm's output has a batch mean of exactly 0, which
    both sides compute as rounding noise.
    """
    initial = {name: b.detach().numpy().copy() for name, b in module.named_buffers()}
    trainer.train_step(x, y, lr=0.0, momentum=0.0, weight_decay=0.0, seed=SEED)
    with torch.no_grad():
        module(torch.from_numpy(x))
    want = {name: b.detach().numpy() - initial[name] for name, b in module.named_buffers()
            if not name.endswith("num_batches_tracked")}
    got = {name: value - initial[name] for name, value in trainer.states.items()}
    assert sorted(got) == sorted(want)
    if want:  # squeezenet has no BatchNorm
        assert_grads_close(got, want, STATISTICS_TOLERANCE)
