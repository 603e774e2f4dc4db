"""The CPU pipeline's ParallelSpatial: kernels nothing else schedules run their spatial loops in parallel, large
ones only, and compute what TVM's serial lowering computes."""

import numpy as np
import pytest
import tvm
from tvm import relax, tirx
from tvm.s_tir import dlight

from fedskel.targets import get_target
from fedskel.targets.cpu_pipeline import MIN_PARALLEL_WORK, ParallelSpatial, cpu_pipeline


def bn_like_module(shape):
    """Elementwise ops and a per-channel reduction over N, H, W, as BatchNorm's statistics and its backward."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            mean = bb.emit(relax.op.mean(x, axis=[0, 2, 3], keepdims=True))
            centred = bb.emit(relax.op.subtract(x, mean))
            out = bb.emit_output(relax.op.multiply(relax.op.nn.relu(centred), relax.const(2.0, "float32")))
        bb.emit_func_output(out)
    return bb.get()


def parallel_loops(func):
    return func.script().count("T.parallel(")


def scheduled_kernels(mod, target):
    with target:
        legalize = relax.backend.cpu_generic.pipeline.legalize_passes(target)
        mod = tvm.transform.Sequential(legalize + [dlight.ApplyDefaultSchedule(ParallelSpatial())])(mod)
    return [func for func in mod.functions.values() if isinstance(func, tirx.PrimFunc)]


@pytest.fixture(scope="module")
def host():
    return get_target("host").tvm()


def test_large_kernels_get_a_parallel_loop_and_small_ones_stay_serial(host):
    large = scheduled_kernels(bn_like_module((8, 16, 16, 16)), host)
    assert large and all(parallel_loops(func) for func in large)
    small_shape = (1, 4, 4, 4)
    assert np.prod(small_shape) < MIN_PARALLEL_WORK
    assert not any(parallel_loops(func) for func in scheduled_kernels(bn_like_module(small_shape), host))


def test_parallel_kernels_compute_what_the_serial_ones_do(host):
    module = bn_like_module((8, 16, 16, 16))
    x = np.random.default_rng(0).standard_normal((8, 16, 16, 16)).astype("float32")
    results = []
    for pipeline in (cpu_pipeline(host), "default"):
        vm = relax.VirtualMachine(tvm.compile(module, target=host, relax_pipeline=pipeline), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    want = 2 * np.maximum(x - x.mean(axis=(0, 2, 3), keepdims=True), 0)
    np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(results[0], results[1])
