"""Built-in models, defined in torch and exported to ONNX: the compiler only ever sees ONNX.

torch is needed only here (and in tests); the exported file is what a user of their own model would bring.
Export uses torch's legacy exporter in TRAINING mode, the only one that keeps trainable BatchNorm.
"""

import copy
import io
import warnings
from dataclasses import dataclass

from .errors import CompileError


@dataclass(frozen=True)
class ZooModel:
    build: object  # () -> torch.nn.Module
    input_shape: tuple  # (C, H, W)
    num_classes: int
    description: str


def _lenet5():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def _cnn_cifar():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def _digits_cnn():
    """CONV-heavy on purpose (global pooling, one small classifier): FedSkel's savings are in CONV filters."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def _resnet(blocks_per_stage, widths):
    """A CIFAR ResNet (3x3 stem, BasicBlocks, BatchNorm, global average pool)."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn1(self.conv1(x)).relu()
            return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()

    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            layers.append(BasicBlock(cin, width, 2 if stage > 0 and block == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


ZOO = {
    "lenet5": ZooModel(_lenet5, (1, 28, 28), 10, "LeNet-5 as in the FedSkel reference (CONV 20 and 50 filters)"),
    "cnn-cifar": ZooModel(_cnn_cifar, (3, 32, 32), 10, "the LG-FedAvg CIFAR CNN (CONV 6 and 16 filters)"),
    "digits-cnn": ZooModel(_digits_cnn, (1, 8, 8), 10, "a small CNN for scikit-learn's 8x8 digits"),
    "resnet8": ZooModel(lambda: _resnet(1, (16, 32, 64)), (3, 32, 32), 10, "CIFAR ResNet-8 with BatchNorm"),
    "resnet18": ZooModel(lambda: _resnet(2, (64, 128, 256, 512)), (3, 32, 32), 10, "CIFAR ResNet-18 with BatchNorm"),
}


def zoo_model(name):
    if name not in ZOO:
        raise CompileError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name]


def build_torch_model(name, seed=0):
    """The torch module of a zoo model, with weights drawn from ``seed``."""
    import torch

    torch.manual_seed(seed)
    return zoo_model(name).build()


def export_onnx(module, input_shape, batch_size):
    """Serialise a torch module (train mode, BatchNorm trainable) to ONNX bytes with a fixed batch.

    The exporter traces a train-mode forward and writes the BatchNorm running statistics as they are
    *after* it; the initializers are reset from the module's own state so the file holds its true start.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    state = {name: value.detach().numpy().copy() for name, value in module.state_dict().items()}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(module).train(),
            (torch.zeros(batch_size, *input_shape),),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
            dynamo=False,
            opset_version=17,
        )
    model = onnx.load_from_string(buffer.getvalue())
    for index, init in enumerate(model.graph.initializer):
        if init.name in state:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(state[init.name], init.name))
    return model.SerializeToString()


def export_zoo_onnx(name, batch_size, path, seed=0):
    """Write a zoo model's ONNX file; returns the torch module it came from (the test oracle)."""
    entry = zoo_model(name)
    module = build_torch_model(name, seed)
    with open(path, "wb") as handle:
        handle.write(export_onnx(module, entry.input_shape, batch_size))
    return module
