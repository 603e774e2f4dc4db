"""Per-CONV-layer backward time, full vs skeleton, for resnet18's CONV shapes at batch 32.

For every distinct CONV of the zoo's CIFAR resnet18, two Relax functions are compiled for the target:
``full(x, dy, w) -> (dX, dW)`` from the conv2d gradient the training graph uses, and ``skeleton(x, dy, w,
idx) -> (dX, dW)`` from compiler/skeleton_backward.py, the code the skeleton pass inserts.  TVM's time
evaluator gives the median of repeated runs; PyTorch eager is timed with aten's convolution_backward on the
full shapes and on the k gathered channels.  Output: JSON (see --out).

With ``--tuning-db DIR`` both functions are built with MetaSchedule's records from DIR/<layer>-r<ratio>
(``--tune-trials N`` first tunes each of those modules for N more trials, resuming, so full and skeleton
kernels of a layer get the same search budget), and the untuned build is timed beside the tuned one.

    python bench/conv_backward.py --out bench/results/conv_backward.json [--ratios 0.1 0.3 0.5]
    python bench/conv_backward.py --ratios 0.1 --tuning-db tuning/conv-backward-b32 --tune-trials 32 \
        --out bench/results/conv_backward_tuned.json
"""

import argparse
import os
import statistics

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.runtime import vm as tvm_vm

from fedskel.compiler.build import compile_executable
from fedskel.compiler.conv_gradient import conv2d_data_grad, conv2d_weight_grad
from fedskel.compiler.skeleton_backward import SkeletonBackward
from fedskel.compiler.tuning import apply_database, tune
from fedskel.compiler.training_graph import skeleton_size
from fedskel.targets import get_target

from common import time_torch_ms, write_json

# (Cin, Cout, kernel, stride, input H=W, how many in resnet18) for every distinct CONV of the CIFAR resnet18
RESNET18_CONVS = [
    (3, 64, 3, 1, 32, 1), (64, 64, 3, 1, 32, 4), (64, 128, 3, 2, 32, 1), (128, 128, 3, 1, 16, 3),
    (64, 128, 1, 2, 32, 1), (128, 256, 3, 2, 16, 1), (256, 256, 3, 1, 8, 3), (128, 256, 1, 2, 16, 1),
    (256, 512, 3, 2, 8, 1), (512, 512, 3, 1, 4, 3), (256, 512, 1, 2, 8, 1),
]


def backward_module(batch, cin, cout, kernel, stride, size, k):
    """full(x, dy, w) and skeleton(x, dy, w, idx), each returning (dX, dW)."""
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    tensor = relax.TensorType
    bb = relax.BlockBuilder()
    attrs = bb.normalize(relax.op.nn.conv2d(relax.Var("x", tensor((batch, cin, size, size), "float32")),
                                            relax.Var("w", tensor((cout, cin, kernel, kernel), "float32")),
                                            strides=stride, padding=pad)).attrs
    for name in ("full", "skeleton"):
        x = relax.Var("x", tensor((batch, cin, size, size), "float32"))
        dy = relax.Var("dy", tensor((batch, cout, out, out), "float32"))
        w = relax.Var("w", tensor((cout, cin, kernel, kernel), "float32"))
        idx = relax.Var("idx", tensor((k,), "int64"))
        with bb.function(name, [x, dy, w] + ([idx] if name == "skeleton" else [])):
            with bb.dataflow():
                if name == "full":
                    dx = bb.emit(conv2d_data_grad(dy, w, attrs, 1, (size, size)))
                    dw = bb.emit(conv2d_weight_grad(x, dy, attrs, 1, (kernel, kernel)))
                else:
                    backward = SkeletonBackward(bb.emit, x, w, dy, idx, attrs)
                    dx, dw = bb.emit(backward.data_grad()), bb.emit(backward.weight_grad())
                result = bb.emit_output(relax.Tuple([dx, dw]))
            bb.emit_func_output(result)
    return bb.get(), out


def build_vm(module, target, tuning_db=None, tune_trials=0):
    """The module's VM: untuned, or with the records of ``tuning_db`` after ``tune_trials`` more trials there."""
    if tuning_db is not None:
        if tune_trials:
            tune(module, target, tuning_db, tune_trials, resume=True)
        module, _ = apply_database(module, target, tuning_db)
    return tvm_vm.VirtualMachine(compile_executable(module, target), tvm.cpu())


def time_tvm_ms(vm, name, args, repeat):
    evaluator = vm.time_evaluator(name, tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=0)
    return statistics.median(evaluator(*args).results) * 1e3


def torch_backward_ms(x, dy, w, idx, stride, kernel, repeat):
    conv_args = ([stride] * 2, [kernel // 2] * 2, [1, 1], False, [0, 0], 1, [True, True, False])
    x, dy, w, idx = (torch.from_numpy(a) for a in (x, dy, w, idx))
    with torch.no_grad():
        full = time_torch_ms(lambda: torch.ops.aten.convolution_backward(dy, x, w, None, *conv_args), repeat)
        sliced = time_torch_ms(lambda: torch.ops.aten.convolution_backward(
            dy.index_select(1, idx), x, w.index_select(0, idx), None, *conv_args), repeat)
    return full, sliced


def summarize(layers):
    """Per ratio, resnet18's whole CONV backward (each layer times its count in the net), full vs skeleton."""
    summary = {}
    for ratio in layers[0]["ratios"]:
        def total(key):  # a layer-level time, or else this ratio's
            return sum(layer["count_in_resnet18"] * (layer[key] if key in layer else layer["ratios"][ratio][key]) for layer in layers)

        entry = summary[ratio] = {key: total(key) for key in ("full_ms", "skeleton_ms", "torch_full_ms", "torch_sliced_ms")}
        entry["speedup"] = entry["full_ms"] / entry["skeleton_ms"]
        if "tuned_full_ms" in layers[0]["ratios"][ratio]:
            entry.update({key: total(key) for key in ("tuned_full_ms", "tuned_skeleton_ms")})
            entry["tuned_speedup"] = entry["tuned_full_ms"] / entry["tuned_skeleton_ms"]
            speedups = sorted(layer["ratios"][ratio]["tuned_speedup"] for layer in layers)
            entry["tuned_layer_speedup_min_median_max"] = [min(speedups), statistics.median(speedups), max(speedups)]
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/conv_backward.json")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--target", default="host")
    parser.add_argument("--tuning-db", help="directory of per-layer MetaSchedule databases to build with")
    parser.add_argument("--layers", nargs="+", help="only these layers (names as printed, e.g. c64-64-k3-s1-32x32)")
    parser.add_argument("--tune-trials", type=int, default=0, help="tune each layer module this many more trials first")
    args = parser.parse_args()
    target = get_target(args.target)
    rng = np.random.default_rng(0)
    layers = []
    for cin, cout, kernel, stride, size, count in RESNET18_CONVS:
        name = f"c{cin}-{cout}-k{kernel}-s{stride}-{size}x{size}"
        if args.layers and name not in args.layers:
            continue
        record = {"layer": name, "count_in_resnet18": count, "ratios": {}}
        for ratio in args.ratios:
            k = skeleton_size(ratio, cout)
            module, out = backward_module(args.batch, cin, cout, kernel, stride, size, k)
            vm = build_vm(module, target)
            x = rng.standard_normal((args.batch, cin, size, size)).astype(np.float32)
            dy = rng.standard_normal((args.batch, cout, out, out)).astype(np.float32)
            w = rng.standard_normal((cout, cin, kernel, kernel)).astype(np.float32)
            idx = np.sort(rng.permutation(cout)[:k]).astype(np.int64)
            t = [tvm.runtime.tensor(a) for a in (x, dy, w, idx)]
            if "full_ms" not in record:
                record["full_ms"] = time_tvm_ms(vm, "full", t[:3], args.repeat)
            skeleton = time_tvm_ms(vm, "skeleton", t, args.repeat)
            torch_full, torch_sliced = torch_backward_ms(x, dy, w, idx, stride, kernel, args.repeat)
            record["torch_full_ms"] = torch_full
            result = record["ratios"][str(ratio)] = {
                "k": k, "skeleton_ms": skeleton, "speedup": record["full_ms"] / skeleton, "ideal": cout / k,
                "torch_sliced_ms": torch_sliced, "torch_speedup": torch_full / torch_sliced,
            }
            line = (f"{name} r={ratio} k={k}: untuned full {record['full_ms']:.1f} ms, skeleton {skeleton:.1f} ms "
                    f"({record['full_ms'] / skeleton:.2f}x, ideal {cout / k:.2f}x)")
            if args.tuning_db:
                db = os.path.join(args.tuning_db, f"{name}-r{ratio}")
                tuned = build_vm(module, target, db, args.tune_trials)
                result["tuned_full_ms"] = time_tvm_ms(tuned, "full", t[:3], args.repeat)
                result["tuned_skeleton_ms"] = time_tvm_ms(tuned, "skeleton", t, args.repeat)
                result["tuned_speedup"] = result["tuned_full_ms"] / result["tuned_skeleton_ms"]
                line += (f"; tuned full {result['tuned_full_ms']:.2f} ms, skeleton {result['tuned_skeleton_ms']:.2f} ms "
                         f"({result['tuned_speedup']:.2f}x)")
            print(f"{line}; torch full {torch_full:.2f} ms, sliced {torch_sliced:.2f} ms", flush=True)
        layers.append(record)
    write_json(args.out, {"benchmark": "conv_backward", "batch": args.batch, "target": args.target,
                          "tuning_db": args.tuning_db, "tune_trials_per_layer_and_ratio": args.tune_trials,
                          "method": "TVM time_evaluator and torch perf_counter, median of repeats (ms)",
                          "layers": layers, "resnet18_total": summarize(layers)})


if __name__ == "__main__":
    main()
