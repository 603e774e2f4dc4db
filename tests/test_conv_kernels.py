"""The NHWC CONV kernels against torch: forward, dgrad and wgrad over kernel sizes, strides, padding,
dilation and channel counts that are not multiples of the vector width (the skeleton's k)."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from fedskel.compiler.kernels import UseConvKernels, conv_kind, wgrad
from fedskel.compiler.kernels.single_layer import single_conv_module
from fedskel.compiler.kernels.tiles import AVX2, AVX512, NEON, SSE, target_isa
from fedskel.targets import get_target

HOST = get_target("host")

# (batch, in channels, out channels, size, kernel, stride, padding, dilation)
CASES = [
    (2, 3, 16, 8, 3, 1, 1, 1),
    (2, 5, 7, 9, 3, 2, 1, 1),  # odd channels, stride 2 with a leftover row
    (1, 8, 12, 7, 1, 1, 0, 1),
    (2, 4, 9, 10, 5, 1, 2, 1),
    (1, 6, 8, 15, 7, 2, 3, 1),
    (2, 4, 8, 9, 3, 1, 2, 2),  # dilated
    (1, 16, 3, 6, 3, 2, 0, 1),  # no padding, 3 outputs
    (3, 1, 4, 12, 3, 3, 1, 1),  # stride 3, one input channel
    (2, 8, 16, 8, 1, 2, 0, 1),  # resnet's 1x1 stride-2 shortcut: three of four dgrad phases get no tap
    (1, 3, 8, 10, 4, 2, 1, 1),  # even kernel, stride 2
    (1, 2, 8, 5, 3, 2, 2, 2),  # dilated and strided: zero-dilated dY
    (2, 32, 48, 4, 3, 1, 1, 1),  # resnet18's last stage: a 4x4 map, wgrad's taps outside, several channel tiles
    (2, 24, 40, 8, 3, 2, 1, 1),  # stride 2 onto a 4x4 map
    (1, 4, 8, 7, 1, 2, 1, 1),  # padded strided 1x1: the subsampled copy reads padding and skips the last row
    (2, 3, 5, 10, 1, 3, 0, 2),  # stride-3 1x1, dilation that a 1x1 ignores
    # wgrad tiled by input channel (a skeleton's k broadcast): row-blocked, k = 29 padded to 3 x 10 (float32)
    (2, 32, 29, 9, 3, 1, 1, 1),
    (2, 16, 29, 4, 3, 1, 1, 1),  # ... a 4x4 map (taps outside) whose padded k cannot be written as OIHW
    (2, 32, 13, 16, 3, 2, 1, 1),  # ... stride 2, k = 13 in one tile
    # Winograd F(2x2, 3x3): 3x3 stride 1, even output, at least 8 input channels (forward and dgrad)
    (2, 16, 32, 12, 3, 1, 1, 1),  # a task takes two rows of tiles
    (1, 32, 16, 6, 3, 1, 0, 1),  # no padding: the dgrad's dY padded by 2
    (1, 32, 20, 8, 3, 1, 1, 1),  # output channels padded to the vectors: NHWC result, then NCHW
    (2, 20, 16, 8, 3, 1, 1, 1),  # 20 input channels (a skeleton dgrad's k): the input transform in 10 lanes
    (1, 17, 16, 6, 3, 1, 1, 1),  # 17, prime: the input transform scalar
    (2, 16, 13, 8, 3, 1, 1, 1),  # wgrad of k = 13: dY padded with zeros to 16 channels, the padding dropped
    (1, 32, 52, 4, 3, 1, 1, 1),  # ... k = 52 -> 64 on a 4x4 map (float64: 52 -> 56)
    # Winograd F(3x3, 2x2) wgrad (X channels in whole vectors, dY's padded): (2, 32, 48, 4) above has one vector a tile
    (4, 128, 64, 8, 3, 1, 1, 1),  # two input-channel blocks, the batch in 4 parts
    (2, 256, 128, 4, 3, 1, 1, 1),  # eight channel blocks, one part: a block of tiles spans 2 images
    (3, 16, 32, 6, 3, 1, 1, 1),  # 3 tiles a row, 3 parts of one image
]


def _kernel_calls(mod):
    """How many CONVs are left to TVM's lowering in ``mod``."""
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: found.append(e) if conv_kind(e) else None)
    return len(found)


def _run(mod, dtype, inputs):
    exe = tvm.compile(mod, target=tvm.target.Target(HOST.tvm_target))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return {name: vm[name](*[tvm.runtime.tensor(a) for a in args]).numpy() for name, args in inputs.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}o{}s{}k{}st{}p{}d{}".format(*c))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_match_torch(case, dtype):
    n, cin, cout, size, k, stride, pad, dil = case
    mod, dy_shape = single_conv_module(*case, dtype)
    rewritten = UseConvKernels(HOST.tvm_target)(mod)
    assert _kernel_calls(mod) == 3 and _kernel_calls(rewritten) == 0
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((n, cin, size, size)).astype(dtype)
    w = rng.standard_normal((cout, cin, k, k)).astype(dtype)
    dy = rng.standard_normal(dy_shape).astype(dtype)
    got = _run(rewritten, dtype, {"forward": (x, w), "dgrad": (dy, w), "wgrad": (x, dy)})
    tx, tw = torch.tensor(x, dtype=torch.float64, requires_grad=True), torch.tensor(w, dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad, dilation=dil)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    tol = 1e-12 if dtype == "float64" else 1e-5
    for name, want in [("forward", ty), ("dgrad", tx.grad), ("wgrad", tw.grad)]:
        want = want.detach().numpy()
        err = np.abs(got[name] - want).max() / np.abs(want).max()
        assert err < tol, f"{name}: relative error {err:.2e}"


def test_grouped_convs_keep_tvms_lowering():
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    w = relax.Var("w", relax.TensorType((4, 2, 3, 3), "float32"))
    call = relax.op.nn.conv2d(x, w, groups=2)
    assert conv_kind(call) is None


def _kernels_called(mod, function):
    """Names of the PrimFuncs ``function`` of ``mod`` calls."""
    names = []
    relax.analysis.post_order_visit(
        mod[function], lambda e: names.append(e.args[0].name_hint) if isinstance(e, relax.Call) and isinstance(
            e.op, tvm.ir.Op) and e.op.name == "relax.call_tir" else None)
    return names


@pytest.mark.parametrize(
    "case,forward,dgrad,wgrad",
    [
        ((2, 64, 64, 8, 3, 1, 1, 1), True, True, True),
        ((2, 3, 64, 8, 3, 1, 1, 1), False, True, False),  # the stem: 3 input channels stay direct
        ((2, 64, 7, 8, 3, 1, 1, 1), True, False, False),  # a skeleton's k = 7 channels of dY: direct dgrad, wgrad
        ((2, 64, 13, 8, 3, 1, 1, 1), True, True, True),  # k = 13: Winograd dgrad, wgrad over dY padded to 16
        ((2, 64, 20, 8, 3, 1, 1, 1), True, True, False),  # k = 20: padding to 32 would cost more than Winograd saves
        ((2, 64, 64, 7, 3, 1, 1, 1), False, False, False),  # odd output
        ((2, 64, 64, 2, 3, 1, 1, 1), False, False, False),  # a 2x2 map: one tile
        ((2, 64, 64, 8, 3, 2, 1, 1), False, False, False),  # stride 2
        ((2, 64, 64, 8, 3, 1, 2, 2), False, False, False),  # dilated
        ((2, 64, 64, 8, 5, 1, 2, 1), False, False, False),  # 5x5
    ],
)
def test_winograd_runs_the_stride_one_3x3_convs(case, forward, dgrad, wgrad):
    mod, _ = single_conv_module(*case, "float32")
    rewritten = UseConvKernels({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})(mod)
    for function, expected in [("forward", forward), ("dgrad", dgrad), ("wgrad", wgrad)]:
        names = _kernels_called(rewritten, function)
        # the Winograd kernels, and they alone, transform their input in a block "v" (B^T d B)
        transforms = [name for name in names if 'T.sblock("v")' in rewritten[name].script()]
        assert bool(transforms) == expected, (function, names)


@pytest.mark.parametrize(
    "target,isa",
    [
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, NEON),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, SSE),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, AVX2),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, AVX512),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sandybridge"}, SSE),
    ],
)
def test_register_tiles_follow_the_targets_isa(target, isa):
    assert target_isa(target) == isa


@pytest.mark.parametrize(
    "out_channels,in_channels,by_input_channel,padded",
    [(7, 64, True, 7), (52, 512, True, 52), (29, 32, True, 30), (64, 64, False, 64), (7, 3, False, 16), (16, 64, False, 16)],
)
def test_weight_gradient_pads_the_fewer_output_channels(out_channels, in_channels, by_input_channel, padded):
    """A skeleton's k channels broadcast (input channels in the lanes) unless X's channels do not fill whole
    vectors or the lanes need no padding: k = 7 costs 7 channels' FLOPs, not 16."""
    tiling = wgrad.plan(AVX512, "float32", out_channels, in_channels)
    assert (tiling.by_input_channel, tiling.out_channels) == (by_input_channel, padded)
    assert tiling.tile.pixels * tiling.tile.vectors <= AVX512.accumulators


@pytest.mark.parametrize("m,k,n", [(32, 800, 500), (10, 32, 500), (500, 32, 800), (3, 7, 1), (16, 24, 16)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_matmul_matches_numpy(m, k, n, dtype):
    bb = relax.BlockBuilder()
    a, b = relax.Var("a", relax.TensorType((m, k), dtype)), relax.Var("b", relax.TensorType((k, n), dtype))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, b))
        bb.emit_func_output(out)
    rewritten = UseConvKernels(HOST.tvm_target)(bb.get())
    assert _kernel_calls(rewritten) == 0
    rng = np.random.default_rng(m + k + n)
    x, y = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    got = _run(rewritten, dtype, {"main": (x, y)})["main"]
    want = x.astype(np.float64) @ y.astype(np.float64)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert np.abs(got - want).max() / np.abs(want).max() < tol
