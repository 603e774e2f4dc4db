"""torchvision's classification models compile and their gradients equal torch autograd (float64).

Random weights, 10 classes, 3x32x32, batch 4, exported the way ``fedskel-compile torchvision:NAME`` does.
Dropouts are compared with the masks the compiled model draws for a given seed (test_dropout.py).  Every
model takes a minute or more to compile on two cores, even with LLVM at opt level 0 (what LLVM's
optimisations may change is checked once in test_targets.py), so they run in the slow step; scripts/setup.sh
installs torchvision (without it they are skipped).
"""

import onnx
import pytest

from fedskel.compiler.errors import CompileError
from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.torchvision_zoo import MODELS, build_torchvision_model, export_torchvision_onnx
from fedskel.runtime import load

from onnx_models import as_float64
from test_compiler_gradients import FLOAT64_TOLERANCE, assert_grads_close, random_batch, random_skeleton
from test_dropout import with_dropout_masks
from test_gradient_rules import HARD_SIGMOID_TOLERANCE
from torch_oracle import nn_conv_outputs, torch_gradients

SEED = 7
FAST_BUILD = 0  # LLVM opt level: this checks the graph's gradients, and level 0 compiles them 3-5x faster
# regnet_x_400mf at 32x32 ends on 1x1 maps, so its last BatchNorms normalise N*H*W = 4 values and amplify
# rounding: torch's own float64 gradients move by up to 8.7e-9 (relative) when the batch is merely permuted
# (stem.0.weight 9.6e-9 here), so 1e-9 would test torch's summation order, not ours.
REGNET_TOLERANCE = 3e-8
TOLERANCE = {"mobilenet_v3_small": HARD_SIGMOID_TOLERANCE, "mobilenet_v3_large": HARD_SIGMOID_TOLERANCE,
             "regnet_x_400mf": REGNET_TOLERANCE}


def _torchvision_or_skip(name):
    try:
        return build_torchvision_model(name, 10)
    except CompileError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_gradients_equal_torch(tmp_path, name):
    _torchvision_or_skip(name)
    path = tmp_path / f"{name}.onnx"
    module = export_torchvision_onnx(name, 10, (3, 32, 32), 4, path)
    onnx.save(as_float64(onnx.load(str(path))), str(path))
    compile_model(str(path), tmp_path / f"{name}.fsk", ratio=0.3, opt_level=FAST_BUILD)
    trainer = load(tmp_path / f"{name}.fsk")
    x, y = random_batch(trainer)
    reference = with_dropout_masks(module.double(), x, SEED).train()
    tolerance = TOLERANCE.get(name, FLOAT64_TOLERANCE)
    _, want = torch_gradients(reference, nn_conv_outputs, x, y)
    assert_grads_close(trainer.gradients(x, y, seed=SEED), want, tolerance)
    skeleton = random_skeleton(trainer)
    _, want_skel = torch_gradients(reference, nn_conv_outputs, x, y, skeleton)
    assert_grads_close(trainer.gradients(x, y, skeleton, seed=SEED), want_skel, tolerance)
