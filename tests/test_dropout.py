"""Training-mode Dropout: a Bernoulli mask of the model's rate, seeded per step, rebuilt here in numpy.

The compiled gradients are compared with torch autograd on the same network whose Dropouts multiply by
the mask this file computes from the seed (compiler/dropout.py's generator, written again in numpy):
equal gradients at several seeds mean the compiled masks are these masks, forward and backward.
"""

import numpy as np
import onnx
import pytest
import torch

from fedskel.compiler.pipeline import compile_model
from fedskel.runtime.manifest import CALLING_CONVENTION
from fedskel.compiler.zoo import export_onnx
from fedskel.runtime import load

from onnx_models import as_float64
from test_compiler_gradients import FLOAT64_TOLERANCE, assert_grads_close, random_batch, random_skeleton
from torch_oracle import nn_conv_outputs, replace_submodule, torch_gradients


def lowbias32(x):
    x = np.atleast_1d(np.asarray(x, dtype=np.uint32))  # arrays: uint32 products wrap silently
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def numpy_mask(seed, layer, shape, rate):
    """1 / (1 - rate) where element (row-major index) of Dropout number ``layer`` is kept, else 0."""
    key = lowbias32(np.uint32(seed & 0xFFFFFFFF) ^ lowbias32(layer + 1))
    hashed = lowbias32(lowbias32(np.arange(np.prod(shape), dtype=np.uint32)) ^ key).reshape(shape)
    return np.where(hashed >= np.uint32(min(round(rate * 2**32), 2**32 - 1)), 1.0 / (1.0 - rate), 0.0)


class FixedMask(torch.nn.Module):
    """Stands in for a torch Dropout: multiplies by a mask given from outside."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, x):
        return x * self.mask


def with_dropout_masks(module, x, seed):
    """``module`` with its Dropouts, numbered in the order they run on ``x``, multiplying by the masks
    the compiled model draws from ``seed``."""
    order, handles = [], []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Dropout):
            handles.append(sub.register_forward_hook(lambda m, i, o, key=name: order.append((key, tuple(i[0].shape), m.p))))
    training = module.training
    with torch.no_grad():  # in eval mode: the dry run must not move BatchNorm's running statistics
        module.eval()(torch.from_numpy(x))
    module.train(training)
    for handle in handles:
        handle.remove()
    for layer, (name, shape, rate) in enumerate(order):
        fixed = FixedMask()
        fixed.mask = torch.from_numpy(numpy_mask(seed, layer, shape, rate).astype(x.dtype))
        replace_submodule(module, name, fixed)
    return module


def network(rates):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Dropout(rates[0]),
        torch.nn.Conv2d(6, 4, 3), torch.nn.Flatten(), torch.nn.Dropout(rates[1]), torch.nn.Linear(4 * 4 * 4, 10),
    )


def compiled(tmp_path, module, ratio=0.5):
    path = tmp_path / "dropout.onnx"
    model = onnx.load_from_string(export_onnx(module, (3, 8, 8), 4))
    assert [n.op_type for n in model.graph.node].count("Dropout") == 2
    onnx.save(as_float64(model), str(path))
    compile_model(str(path), tmp_path / "dropout.fsk", ratio=ratio)
    return load(tmp_path / "dropout.fsk")


RATES = (0.3, 0.5)


@pytest.fixture(scope="module")
def dropout_trainer(tmp_path_factory):
    trainer = compiled(tmp_path_factory.mktemp("dropout"), network(RATES))
    return trainer


def test_training_functions_take_a_seed_only_with_dropout(dropout_trainer, artifact):
    assert dropout_trainer.has_dropout
    assert dropout_trainer.manifest["functions"]["gradients"] == ["input", "params", "states", "dropout_seed", "labels"]
    assert dropout_trainer.manifest["functions"]["predict"] == CALLING_CONVENTION["predict"]
    assert load(artifact("lenet5", ratio=0.3, batch_size=4)).manifest["functions"] == CALLING_CONVENTION


@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 7])
def test_gradients_equal_torch_with_the_mask_of_the_seed(dropout_trainer, seed):
    x, y = random_batch(dropout_trainer)
    reference = with_dropout_masks(network(RATES).double(), x, seed).train()
    _, want = torch_gradients(reference, nn_conv_outputs, x, y)
    assert_grads_close(dropout_trainer.gradients(x, y, seed=seed), want, FLOAT64_TOLERANCE)
    skeleton = random_skeleton(dropout_trainer)
    _, want_skel = torch_gradients(reference, nn_conv_outputs, x, y, skeleton)
    assert_grads_close(dropout_trainer.gradients(x, y, skeleton, seed=seed), want_skel, FLOAT64_TOLERANCE)


def test_masks_have_the_rate_and_change_every_step(dropout_trainer):
    masks = [numpy_mask(seed, 0, (64, 6, 16, 16), 0.3) for seed in (0, 1)]
    for mask in masks:  # 98304 draws: 5 standard deviations is 0.0073
        assert abs((mask == 0).mean() - 0.3) < 0.0075
    assert (masks[0] != masks[1]).mean() > 0.3
    x, y = random_batch(dropout_trainer)
    start = dropout_trainer.dropout_seed
    first, second = dropout_trainer.gradients(x, y), dropout_trainer.gradients(x, y)
    assert dropout_trainer.dropout_seed == start + 2
    assert not np.allclose(first["0.weight"], second["0.weight"])
    np.testing.assert_array_equal(first["0.weight"], dropout_trainer.gradients(x, y, seed=start)["0.weight"])


def test_rate_zero_and_inference_are_the_identity(dropout_trainer, tmp_path):
    plain = network((0.0, 0.0)).double().train()
    trainer = compiled(tmp_path, network((0.0, 0.0)))
    x, y = random_batch(trainer)
    _, want = torch_gradients(plain, nn_conv_outputs, x, y)
    assert_grads_close(trainer.gradients(x, y), want, FLOAT64_TOLERANCE)
    with torch.no_grad():
        logits = network(RATES).double().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(dropout_trainer.predict(x), logits, rtol=1e-12, atol=1e-12)
