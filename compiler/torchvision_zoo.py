"""torchvision's classification models as compile inputs: ``torchvision:NAME``, exported for the user.

PyPI's torchvision 0.28.0 (the release for torch 2.13) is a CUDA build: on the CPU torch, ``import
torchvision`` fails with "operator torchvision::nms does not exist" because its C++ ops are not loaded.
The model builders do not need them; defining the schemas of the two ops its Python registers fakes for
(``nms``, ``qnms``) lets it import.  We use torchvision's own builders rather than copies of them: the
point is to compile the models people actually use.  Install it beside torch without replacing it:
``pip install --no-deps torchvision==0.28.0``.
"""

import sys

from .errors import CompileError
from .zoo import export_onnx

PREFIX = "torchvision:"
# the classification models of issue 13, small enough to train on an edge device
MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5",
          "squeezenet1_1", "efficientnet_b0", "densenet121", "regnet_x_400mf", "googlenet", "mnasnet0_5")
_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True}, "efficientnet_b0": {"stochastic_depth_prob": 0.0}}


_LIBRARIES = []  # the op definitions live as long as their Library objects


def _torchvision():
    """torchvision, importable on the CPU torch: a first import that misses its C++ ops is retried
    after defining their schemas (a build whose ops load never takes that path)."""
    try:
        import torchvision

        return torchvision
    except ImportError:
        raise CompileError("torchvision models need torchvision: pip install --no-deps torchvision==0.28.0") from None
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    import torch

    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module]
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)
    import torchvision

    return torchvision


def build_torchvision_model(name, num_classes, seed=0):
    """torchvision's ``name`` with random weights from ``seed`` and ``num_classes`` outputs."""
    if name not in MODELS:
        raise CompileError(f"unknown torchvision model {name!r}; known: {', '.join(MODELS)}")
    import torch

    models = _torchvision().models
    torch.manual_seed(seed)
    return getattr(models, name)(num_classes=num_classes, **_OPTIONS.get(name, {}))


def export_torchvision_onnx(name, num_classes, input_shape, batch_size, path, seed=0):
    """Write torchvision ``name`` as a training ONNX file; returns the torch module (the test oracle)."""
    module = build_torchvision_model(name, num_classes, seed)
    with open(path, "wb") as handle:
        handle.write(export_onnx(module, tuple(input_shape), batch_size))
    return module
