"""WidenReductionAccumulators: float32 reductions accumulate in float64, nothing else changes."""

import numpy as np
import tvm
from tvm import relax
from tvm.runtime import vm as tvm_vm

from fedskel.compiler.wide_accumulation import WidenReductionAccumulators

N = 1 << 20


def reductions_module(dtype):
    """sum, mean, variance and collapse_sum_to of one (2, N) tensor."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, N), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            outputs = [
                bb.emit(relax.op.sum(x, axis=[1])),
                bb.emit(relax.op.mean(x, axis=[1])),
                bb.emit(relax.op.variance(x, axis=[1])),
                bb.emit(relax.op.collapse_sum_to(x, (2, 1))),
            ]
            result = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(result)
    return bb.get()


def calls(module, name):
    found = []
    relax.analysis.post_order_visit(
        module["main"], lambda e: found.append(e) if isinstance(e, relax.Call) and getattr(e.op, "name", None) == name else None
    )
    return found


def run(module, x):
    vm = tvm_vm.VirtualMachine(tvm.compile(module, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return [o.numpy().ravel() for o in vm["main"](tvm.runtime.tensor(x))]


def test_every_float32_reduction_reads_float64_and_returns_float32():
    module = WidenReductionAccumulators()(reductions_module("float32"))
    for name in ("relax.sum", "relax.mean", "relax.variance", "relax.collapse_sum_to"):
        (call,) = calls(module, name)
        assert (call.args[0].ty.dtype, call.ty.dtype) == ("float64", "float64"), name
    tvm.ir.assert_structural_equal(module["main"].ret_ty, reductions_module("float32")["main"].ret_ty)


def test_float64_module_is_left_alone():
    module = reductions_module("float64")
    tvm.ir.assert_structural_equal(WidenReductionAccumulators()(module), module)


def test_long_float32_reductions_come_out_correctly_rounded():
    """1 followed by 2^20 values of 2^-25: sequential float32 adds lose every small term (1 + 2^-25 rounds
    to 1), the float64 accumulator keeps them all."""
    x = np.full((2, N), 2.0**-25, np.float32)
    x[:, 0] = 1.0
    exact = 1.0 + (N - 1) * 2.0**-25
    plain = run(reductions_module("float32"), x)
    wide = run(WidenReductionAccumulators()(reductions_module("float32")), x)
    assert abs(plain[0][0] - exact) > 1e-2  # what the pass is for: without it the sum is 1.0
    for got, want in zip(wide, (exact, exact / N, x[0].astype(np.float64).var(), exact)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
