"""Where a built training step spends its time: every kernel call of ``train_step`` and ``train_step_skel``
timed through the Relax VM's instrument hook, grouped by kernel class.

    python bench/profile_step.py ARTIFACT --out bench/results/profile_digits-cnn.json

Prints a table per step (class, time, share, calls) and writes JSON and a bar chart PNG beside it.
The hook's own cost is a few microseconds a call; the step's wall time without it is reported too, timed on a
second VM over the same library that never had a hook (a VM's hook cannot be removed, and even a no-op Python
hook costs ~0.5 us an instruction: digits-cnn's step read 1.4 ms with one, 0.6 ms without).
"""

import argparse
import os
import re
import statistics
import time
from collections import defaultdict

# kernel name pattern -> class, first match wins (names come from compiler/kernels and TVM's op fusion)
CLASSES = [
    (r"^vm\.builtin", "VM builtins (allocation, checks)"),
    (r"fedskel_conv_forward", "CONV forward (+ dgrad of equal shape)"),  # add_func shares equal kernels
    (r"fedskel_conv_dgrad", "CONV dgrad"),
    (r"fedskel_conv_wgrad", "CONV wgrad"),
    (r"fedskel_(to_|filter|winograd_filter)", "CONV layout"),
    (r"conv2d_transpose", "CONV dgrad (TVM)"),
    (r"conv2d", "CONV (TVM)"),
    (r"take|scatter|zeros", "skeleton take/scatter"),
    (r"nll_loss|log_softmax|matmul|dense", "FC + loss"),
    (r"abs", "importance"),
    (r"mean|variance|sqrt|rsqrt|batch_norm|collapse_sum|sum", "BatchNorm / reductions"),
    (r"max_pool|avg_pool|adaptive", "pooling"),
    (r"relu|where|less|greater", "ReLU fwd/bwd"),
    (r"cast|astype", "casts"),
    (r"multiply.*add.*subtract|subtract.*multiply", "SGD"),
]


def kernel_class(name):
    for pattern, label in CLASSES:
        if re.search(pattern, name):
            return label
    return "other"


def profile(vm, plain_vm, function, args, rounds):
    """({kernel: (median seconds per step, calls per step)}, median wall s with the hook (``vm``), without it
    (``plain_vm``, never hooked))."""
    import tvm_ffi

    stack, totals, calls = [], defaultdict(float), defaultdict(int)

    def instrument(func, symbol, before, ret, *rest):
        if before:
            stack.append(time.perf_counter())
        else:
            totals[symbol] += time.perf_counter() - stack.pop()
            calls[symbol] += 1
        return 0

    vm.set_instrument(tvm_ffi.convert(instrument))
    vm[function](*args)  # warm-up
    plain_vm[function](*args)
    per_round, hooked, plain = [], [], []
    for _ in range(rounds):
        totals.clear(), calls.clear()
        start = time.perf_counter()
        vm[function](*args)
        hooked.append(time.perf_counter() - start)
        per_round.append({name: (totals[name], calls[name]) for name in totals})
        start = time.perf_counter()
        plain_vm[function](*args)
        plain.append(time.perf_counter() - start)
    names = set().union(*per_round) - {function, "gradients", "gradients_skel"}
    kernels = {name: (statistics.median(r.get(name, (0.0, 0))[0] for r in per_round), per_round[0].get(name, (0, 0))[1])
               for name in names}
    return kernels, statistics.median(hooked), statistics.median(plain)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench/results/profile.json")
    parser.add_argument("--threads", type=int, default=2, help="TVM's threads (its default is half the CPUs: 1 on 2 cores)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    from common import CompiledModel, write_json

    model = CompiledModel(args.artifact)
    unhooked = CompiledModel(args.artifact)  # its own VM, never hooked, for the step's plain wall time
    steps = {}
    for function in ("train_step", "train_step_skel"):
        kernels, hooked, plain = profile(model.vm, unhooked.vm, function, model.args(function), args.rounds)
        classes = defaultdict(lambda: {"s": 0.0, "calls": 0, "kernels": 0})
        for name, (seconds, count) in kernels.items():
            entry = classes[kernel_class(name)]
            entry["s"] += seconds
            entry["calls"] += count
            entry["kernels"] += 1
        total = sum(entry["s"] for entry in classes.values())
        print(f"== {function}: wall {plain * 1e3:.2f} ms ({hooked * 1e3:.2f} ms hooked), kernels {total * 1e3:.2f} ms")
        for label, entry in sorted(classes.items(), key=lambda item: -item[1]["s"]):
            entry["share"] = entry["s"] / total if total else 0.0
            print(f"  {label:26s} {entry['s'] * 1e3:9.2f} ms {100 * entry['share']:5.1f}%  {entry['calls']:4d} calls")
        top = sorted(kernels.items(), key=lambda item: -item[1][0])[:15]
        steps[function] = {"wall_ms": plain * 1e3, "hooked_wall_ms": hooked * 1e3, "classes": dict(classes),
                           "top_kernels": [{"kernel": k, "ms": s * 1e3, "calls": c} for k, (s, c) in top]}
    write_json(args.out, {"benchmark": "profile_step", "artifact": model.manifest["model"],
                          "batch": model.manifest["batch_size"], "threads": args.threads, "conv_kernels": model.manifest.get("conv_kernels"),
                          "method": f"median of {args.rounds} rounds of per-kernel time (VM instrument hook)", **steps})
    plot(steps, args.out.removesuffix(".json") + ".png")


def plot(steps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label for step in steps.values() for label in step["classes"]},
                    key=lambda label: -steps["train_step"]["classes"].get(label, {"s": 0})["s"])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(labels) + 1.5))
    for offset, (function, step) in enumerate(steps.items()):
        values = [step["classes"].get(label, {"s": 0})["s"] * 1e3 for label in labels]
        ax.barh([i + 0.4 * offset for i in range(len(labels))], values, height=0.4, label=function)
    ax.set_yticks([i + 0.2 for i in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per step (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
