"""BatchNorm running statistics equal torch's after training, at the tiny N*H*W where the conventions
differ most (n = 4: the unbiased batch variance is 4/3 of the biased one), and the manifest says so."""

import numpy as np
import onnx
import torch

from fedskel.compiler.pipeline import compile_model
from fedskel.compiler.zoo import export_onnx
from fedskel.runtime import load

from onnx_models import as_float64
from test_compiler_gradients import random_batch

STATE_TOLERANCE = 1e-9  # float64; the issue asks for 1e-6


def tiny_bn_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, stride=2, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),  # 4 x 1 x 1: n = 4
        torch.nn.Conv2d(6, 4, 1), torch.nn.BatchNorm2d(4, momentum=0.3), torch.nn.Flatten(), torch.nn.Linear(4, 10),
    )


def test_running_variance_is_unbiased_like_torch(tmp_path):
    module = tiny_bn_network()
    path = tmp_path / "bn.onnx"
    onnx.save(as_float64(onnx.load_from_string(export_onnx(module, (3, 3, 3), 4))), str(path))
    manifest = compile_model(str(path), tmp_path / "bn.fsk", ratio=0.5)
    assert manifest["batch_norm_running_var"] == "unbiased"
    trainer = load(tmp_path / "bn.fsk")
    module = module.double().train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x, y = random_batch(trainer, seed=step)
        trainer.train_step(x, y, lr=0.1, momentum=0.9, weight_decay=0.0)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimizer.step()
    states = trainer.states
    buffers = {name: b.detach().numpy() for name, b in module.named_buffers() if name in states}
    assert sorted(buffers) == sorted(states) and len(states) == 4
    for name, want in buffers.items():
        np.testing.assert_allclose(states[name], want, rtol=STATE_TOLERANCE, atol=STATE_TOLERANCE, err_msg=name)
    params = trainer.params
    for name, p in module.named_parameters():
        np.testing.assert_allclose(params[name], p.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
