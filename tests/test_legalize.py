"""Our legalizations (targets/legalize.py) through the pipelines that build and tune: ReLU keeps NaN as torch's does."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from fedskel.compiler.build import compile_executable
from fedskel.targets import get_target


def relu_module(shape, dtype):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [7, 64 * 1024])  # serial, and parallel in vector lanes (ParallelSpatial)
def test_relu_keeps_nan_like_torch(dtype, size):
    x = np.resize(np.array([np.nan, np.inf, -np.inf, -1.5, -0.0, 0.0, 2.5], dtype), size)
    vm = relax.VirtualMachine(compile_executable(relu_module((size,), dtype), get_target("host")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, torch.relu(torch.tensor(x)).numpy())  # NaN equals NaN here
