"""Every compiled gradient equals torch autograd; skeleton gradients equal autograd with dY masked.

Zoo models are checked against their own torch modules; ONNX files written by onnx_models.py (grouped,
depthwise, strided, dilated, bias-free CONVs, BatchNorm) against the torch reference evaluator.

The truth is float64.  A float32 build is judged against torch in float64 on the same inputs and weights:
per tensor, its error may be at most a small factor of torch's own float32 error against that reference
(plus a rounding floor).  Comparing two float32 computations instead puts the verdict at the mercy of
each CPU's instruction set and summation order.  Float64 builds are held to rounding level.
"""

import copy


import numpy as np
import onnx
import pytest
import torch

from fedskel.compiler import training_graph
from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.zoo import build_torch_model, export_zoo_onnx
from fedskel.runtime import load

from onnx_models import ONNX_CASES, as_float64, write_case
from torch_oracle import OnnxTorchModule, nn_conv_outputs, onnx_conv_outputs, torch_gradients

FLOAT64_TOLERANCE = 1e-9  # max |error| relative to max |reference| per tensor
# A float32 tensor's error against float64 may be ACCURACY_FACTOR x torch float32's own, plus ROUNDING_FLOOR
# (relative to the tensor's scale, ~8 float32 ulps: for tensors torch happens to get almost exact).  Measured with
# the float64-accumulating reductions: at most 1.9x; without them (sequential float32 sums) up to 9x.
ACCURACY_FACTOR = 4.0
ROUNDING_FLOOR = 1e-6
# A CONV bias before train-mode BatchNorm has an exactly zero gradient (BN removes the mean): both sides
# return rounding noise there, so a tensor's scale is at least this fraction of the model's largest gradient.
NOISE_FLOOR = 1e-2
ZOO_CASES = [("lenet5", 4), ("cnn-cifar", 4), ("digits-cnn", 8), ("resnet8", 4)]


def _scales(want):
    model_scale = max(np.abs(w).max() for w in want.values())
    return {name: max(np.abs(w).max(), NOISE_FLOOR * model_scale) for name, w in want.items()}


def assert_grads_close(got, want, tolerance=FLOAT64_TOLERANCE):
    assert sorted(got) == sorted(want)
    for name, scale in _scales(want).items():
        error = np.abs(got[name] - want[name]).max() / scale
        assert error <= tolerance, f"{name}: relative error {error:.2e}"


def assert_as_accurate_as_torch(got, torch32, exact):
    """Every tensor of ``got`` (float32) is within ACCURACY_FACTOR x torch float32's error of ``exact``."""
    assert sorted(got) == sorted(exact) == sorted(torch32)
    failures = []
    for name, scale in _scales(exact).items():
        error = np.abs(got[name] - exact[name]).max() / scale
        torch_error = np.abs(torch32[name] - exact[name]).max() / scale
        if error > ACCURACY_FACTOR * torch_error + ROUNDING_FLOOR:
            failures.append(f"{name}: error {error:.2e} against float64, torch float32's {torch_error:.2e}")
    assert not failures, "; ".join(failures)


def random_batch(trainer, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(trainer.input_shape).astype(trainer.dtype)
    return x, rng.integers(0, trainer.num_classes, trainer.input_shape[0])


def random_skeleton(trainer, seed=1):
    """k distinct channels per layer, deliberately unsorted."""
    rng = np.random.default_rng(seed)
    return {w: rng.permutation(c)[:k] for w, (c, k) in trainer.skeleton_layers.items()}


class TorchReference:
    """torch's answers to compare a build with: float64 ``exact`` and, for float32 builds, torch's float32."""

    def __init__(self, module, conv_outputs, exact_module=None, tolerance=FLOAT64_TOLERANCE):
        self.module, self.conv_outputs = module, conv_outputs
        self.exact_module = exact_module  # the float64 twin of a float32 module; None for float64 modules
        self.tolerance = tolerance  # of a float64 module

    def gradients(self, x, y, skeleton=None):
        """(torch at the build's precision, float64 truth)."""
        _, want = torch_gradients(self.module, self.conv_outputs, x, y, skeleton)
        if self.exact_module is None:
            return want, want
        _, exact = torch_gradients(self.exact_module, self.conv_outputs, x.astype(np.float64), y, skeleton)
        return want, exact

    def importance(self, x):
        def of(module, inputs):
            with torch.no_grad():
                _, outputs = self.conv_outputs(module, torch.from_numpy(inputs))
            return {w: y_conv.abs().sum(dim=(0, 2, 3)).numpy() for w, y_conv in outputs.items()}

        want = of(self.module, x)
        return want, want if self.exact_module is None else of(self.exact_module, x.astype(np.float64))

    def assert_matches(self, got, answers):
        want, exact = answers
        if self.exact_module is None:
            assert_grads_close(got, want, self.tolerance)
        else:
            assert_as_accurate_as_torch(got, want, exact)


def float64_twin(module):
    return copy.deepcopy(module).double()


def check_against_torch(trainer, reference):
    x, y = random_batch(trainer)
    reference.assert_matches(trainer.gradients(x, y), reference.gradients(x, y))
    skeleton = random_skeleton(trainer)
    got_skel = trainer.gradients(x, y, skeleton)
    reference.assert_matches(got_skel, reference.gradients(x, y, skeleton))
    for weight, index in skeleton.items():  # rows outside the skeleton are exactly zero
        outside = np.setdiff1d(np.arange(got_skel[weight].shape[0]), index)
        assert not got_skel[weight][outside].any()
    # FedSkel's importance metric: per channel, sum over N, H, W of |CONV output|
    reference.assert_matches(trainer.importance(x), reference.importance(x))


def zoo_reference(name, dtype=np.float32):
    module = build_torch_model(name, seed=0).train()
    if dtype == np.float64:
        return TorchReference(module.double(), nn_conv_outputs)
    return TorchReference(module, nn_conv_outputs, float64_twin(module))


def onnx_reference(model):
    """torch's evaluator of ``model``, with a float64 twin when the model computes in float32."""
    is_float64 = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    exact = None if is_float64 else OnnxTorchModule(as_float64(model))
    return TorchReference(OnnxTorchModule(model), onnx_conv_outputs, exact)


@pytest.mark.parametrize("ratio", [0.3, 1.0])
@pytest.mark.parametrize("name,batch", ZOO_CASES)
def test_zoo_gradients_match_torch(artifact, name, batch, ratio):
    trainer = load(artifact(name, ratio=ratio, batch_size=batch))
    check_against_torch(trainer, zoo_reference(name))


def test_resnet18_gradients_match_torch(artifact):
    """The deepest zoo model in float32, judged against float64 like every float32 build."""
    trainer = load(artifact("resnet18", ratio=0.3, batch_size=8))
    check_against_torch(trainer, zoo_reference("resnet18"))


def test_accuracy_check_fails_a_rounding_sized_bug(tmp_path, monkeypatch):
    """The check can fail on an error of rounding size: resnet8 built with sequential float32 sums (the
    float64-accumulating reductions switched off) is up to 9x torch's float32 error, and is refused."""
    monkeypatch.setattr(training_graph, "WidenReductionAccumulators", lambda: (lambda module: module))
    path = tmp_path / "resnet8-narrow.fsk"
    compile_model("resnet8", path, ratio=1.0, batch_size=4)
    trainer = load(path)
    x, y = random_batch(trainer)
    reference = zoo_reference("resnet8")
    with pytest.raises(AssertionError, match="against float64"):
        reference.assert_matches(trainer.gradients(x, y), reference.gradients(x, y))


def test_resnet18_graph_in_float64(artifact, tmp_path):
    """At batch 2 no float32 implementation agrees with float64 (torch's own is 15% off): the graph is
    checked in float64, where full and skeleton gradients must equal torch's to rounding."""
    path = tmp_path / "resnet18.onnx"
    export_zoo_onnx("resnet18", 2, path)
    onnx.save(as_float64(onnx.load(str(path))), str(path))
    trainer = load(artifact(path, ratio=0.3, batch_size=None))
    assert trainer.dtype == np.float64
    check_against_torch(trainer, zoo_reference("resnet18", np.float64))


def test_onnx_float64_model_trains_in_float64(artifact, tmp_path):
    path = tmp_path / "batchnorm64.onnx"
    onnx.save(as_float64(ONNX_CASES["batchnorm"](4)), str(path))
    trainer = load(artifact(path, ratio=0.5, batch_size=None))
    assert all(p.dtype == np.float64 for p in trainer.params.values())
    check_against_torch(trainer, onnx_reference(onnx.load(str(path))))
    x, y = random_batch(trainer)
    with pytest.raises(ValueError, match="input must be float64, got float32"):
        trainer.gradients(x.astype(np.float32), y)


@pytest.mark.parametrize("case,ratio", [(case, 0.5) for case in ONNX_CASES] + [("grouped", 1.0), ("batchnorm", 1.0)])
def test_onnx_gradients_match_torch(artifact, tmp_path, case, ratio):
    path = write_case(case, 4, tmp_path / f"{case}.onnx")
    trainer = load(artifact(path, ratio=ratio, batch_size=None))
    check_against_torch(trainer, onnx_reference(onnx.load(str(path))))


def _torch_training(module, conv_outputs, batches, skeletons, lr, momentum, weight_decay, dtype):
    optimizer = torch.optim.SGD([p for _, p in module.named_parameters()], lr=lr, momentum=momentum, weight_decay=weight_decay)
    for (x, y), skeleton in zip(batches, skeletons):
        optimizer.zero_grad()
        logits, outputs = conv_outputs(module, torch.from_numpy(x.astype(dtype)))
        for weight, index in (skeleton or {}).items():
            mask = torch.zeros(outputs[weight].shape[1])
            mask[torch.as_tensor(index)] = 1
            outputs[weight].register_hook(lambda g, m=mask: g * m.view(1, -1, 1, 1))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y.astype(np.int64))).backward()
        optimizer.step()
    return {n: p.detach().numpy().copy() for n, p in module.named_parameters()}


@pytest.mark.parametrize("name", ["lenet5", "resnet8"])
def test_ten_sgd_steps_match_torch(artifact, name):
    """3 SetSkel (full) then 7 UpdateSkel (skeleton) steps: parameters equal torch.optim.SGD's.

    Judged on what the steps changed (parameter minus its initial value), against torch.optim.SGD in
    float64, within ACCURACY_FACTOR x the error of torch.optim.SGD in float32."""
    trainer = load(artifact(name, ratio=0.3, batch_size=4))
    module = build_torch_model(name, seed=0).train()
    exact_module = float64_twin(module)
    initial = {n: p.detach().numpy().astype(np.float64) for n, p in module.named_parameters()}
    batches = [random_batch(trainer, seed) for seed in range(10)]
    skeleton = random_skeleton(trainer)
    skeletons = [None] * 3 + [skeleton] * 7
    hyper = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    for (x, y), step_skeleton in zip(batches, skeletons):
        trainer.train_step(x, y, skeleton=step_skeleton, **hyper)
    want = _torch_training(module, nn_conv_outputs, batches, skeletons, **hyper, dtype=np.float32)
    exact = _torch_training(exact_module, nn_conv_outputs, batches, skeletons, **hyper, dtype=np.float64)

    def change(params):
        return {n: params[n].astype(np.float64) - initial[n] for n in initial}

    assert_as_accurate_as_torch(change(trainer.params), change(want), change(exact))
    # BatchNorm running statistics: Relax updates running_var with the biased batch variance where torch
    # uses the unbiased one (a factor n/(n-1) on the batch term), hence the looser bound.
    states = trainer.states
    for name_, buffer in module.named_buffers():
        if name_ in states:
            np.testing.assert_allclose(states[name_], buffer.numpy(), rtol=2e-3, atol=1e-5)

