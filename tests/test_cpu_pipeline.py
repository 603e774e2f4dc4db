"""The CPU pipeline's ParallelSpatial: kernels nothing else schedules run their spatial loops in parallel, large
ones only, with their innermost loop (elementwise) or innermost reduction loop (sums, as partial sums per lane)
in vector lanes where the lanes divide it, and compute what TVM's serial lowering computes."""

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


def reduces(func):
    return "T.init()" in func.script()


def vectorized(func):
    return "T.vectorized(" in func.script()


@pytest.mark.parametrize("shape, elementwise_lanes, reduction_lanes", [
    ((8, 16, 16, 16), True, True),
    ((8, 16, 16, 12), True, True),
    ((8, 16, 16, 15), True, False),  # the elementwise lanes run over 16 x 15; the sum's innermost loop is 15
    ((9, 15, 15, 15), False, False),  # no trailing product of 9 x 15 x 15 x 15 is even
])
def test_kernels_run_their_inner_loops_in_vector_lanes(host, shape, elementwise_lanes, reduction_lanes):
    """One fused kernel: the mean's sum, then the elementwise tail.  A sum in lanes is two vector loops (the
    per-lane partial sums' init and update), the elementwise block one."""
    kernels = scheduled_kernels(bn_like_module(shape), host)
    assert kernels and all(reduces(func) for func in kernels)
    assert all(parallel_loops(func) for func in kernels)
    for func in kernels:
        assert func.script().count("T.vectorized(") == int(elementwise_lanes) + 2 * int(reduction_lanes)
        # a reduction sums per lane into a buffer of partial sums, added up per parallel task
        assert ("_rf" in func.script()) == reduction_lanes


def test_weight_shaped_kernels_run_in_vector_lanes_and_compute_exactly(host):
    """A [Cout, Cin, 3, 3] tensor: its last axis (3) takes no lanes, Cin x 3 x 3 does.  The skeleton's gradient
    scatter (k rows gathered by an inverse index, the rest masked to zero) and an SGD update over it run in
    vector lanes and equal numpy bit for bit."""
    shape, k = (64, 32, 3, 3), 20
    bb = relax.BlockBuilder()
    rows = relax.Var("rows", relax.TensorType((k, *shape[1:]), "float32"))
    index = relax.Var("index", relax.TensorType((shape[0],), "int64"))
    mask = relax.Var("mask", relax.TensorType((shape[0], 1, 1, 1), "bool"))
    weight = relax.Var("weight", relax.TensorType(shape, "float32"))
    with bb.function("main", [rows, index, mask, weight]):
        with bb.dataflow():
            gathered = bb.emit(relax.op.take(rows, index, axis=0))
            grad = bb.emit(relax.op.where(mask, gathered, relax.const(0.0, "float32")))
            out = bb.emit_output(relax.op.subtract(weight, relax.op.multiply(grad, relax.const(0.5, "float32"))))
        bb.emit_func_output(out)
    module = bb.get()
    kernels = scheduled_kernels(module, host)
    assert kernels and all(vectorized(func) and parallel_loops(func) for func in kernels)
    rng = np.random.default_rng(2)
    skeleton = np.sort(rng.permutation(shape[0])[:k])
    inverse = np.zeros(shape[0], np.int64)
    inverse[skeleton] = np.arange(k)
    selected = np.zeros((shape[0], 1, 1, 1), bool)
    selected[skeleton] = True
    values = [rng.standard_normal((k, *shape[1:])).astype("float32"), inverse, selected,
              rng.standard_normal(shape).astype("float32")]
    vm = relax.VirtualMachine(tvm.compile(module, target=host, relax_pipeline=cpu_pipeline(host)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in values]).numpy()
    want = values[3] - np.where(selected, values[0][inverse], np.float32(0)) * np.float32(0.5)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("width", [16, 15])
def test_parallel_kernels_compute_what_the_serial_ones_do(host, width):
    module = bn_like_module((8, 16, 16, width))
    x = np.random.default_rng(0).standard_normal((8, 16, 16, width)).astype("float32")
    results = []
    for pipeline in (cpu_pipeline(host), "default"):
        vm = relax.VirtualMachine(tvm.compile(module, target=host, relax_pipeline=pipeline), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    want = 2 * np.maximum(x - x.mean(axis=(0, 2, 3), keepdims=True), 0)
    np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-6)
    # the lanes reorder the mean's float32 sum (the training graph's sums accumulate in float64)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-6)


def test_vector_lanes_compute_what_the_serial_kernels_do_exactly(host):
    """An elementwise block is bit-identical; a float64 sum of float32 values is too, here where every
    partial sum is exact (small integers), so any lost or doubled element would show."""
    shape = (4, 8, 16, 32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            wide = bb.emit(relax.op.astype(x, "float64"))
            total = bb.emit(relax.op.sum(wide, axis=[0, 2, 3]))
            out = bb.emit_output(relax.Tuple([total, bb.emit(relax.op.multiply(relax.op.nn.relu(x), x))]))
        bb.emit_func_output(out)
    module = bb.get()
    assert all("T.vectorized(" in func.script() for func in scheduled_kernels(module, host))
    x = np.random.default_rng(1).integers(-50, 50, shape).astype("float32")
    results = []
    for pipeline in (cpu_pipeline(host), "default"):
        vm = relax.VirtualMachine(tvm.compile(module, target=host, relax_pipeline=pipeline), tvm.cpu())
        results.append([t.numpy() for t in vm["main"](tvm.runtime.tensor(x))])
    np.testing.assert_array_equal(results[0][0], x.astype(np.float64).sum(axis=(0, 2, 3)))
    for ours, serial in zip(*results):
        np.testing.assert_array_equal(ours, serial)
