"""Per-layer CONV kernels against oneDNN: forward, dgrad and wgrad of every distinct resnet18-CIFAR CONV,
full and skeleton (k = ceil(r * Cout) output channels), batch 32.

Each class is one Relax function of compiler/kernels/single_layer.py, built with the hand-scheduled NHWC
kernels (layout conversions included in the time) and, with ``--tvm-default``, also with TVM's own
lowering.  PyTorch runs the same op on the same shapes (``conv2d``; ``aten.convolution_backward`` with only
dX or only dW asked).  Rounds are interleaved, TVM and torch alternating (each a burst after a settle pause,
common.timed_burst), and medians reported, PyTorch with freed memory kept (common.keep_freed_memory); thread
counts are set for both (``--threads``).  Output: JSON and a bar chart PNG of time / oneDNN's per layer.

    python bench/conv_kernels.py --out bench/results/conv_kernels.json
"""

import argparse
import os
import statistics

import numpy as np

from conv_backward import RESNET18_CONVS


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3, help="calls per round and library, the first untimed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tvm-default", action="store_true", help="also time TVM's own CONV lowering")
    parser.add_argument("--out", default="bench/results/conv_kernels.json")
    return parser.parse_args()


def main():
    args = parse()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    import torch
    import tvm
    from tvm import relax

    from fedskel.compiler.kernels import UseConvKernels
    from fedskel.compiler.kernels.single_layer import single_conv_module
    from fedskel.compiler.training_graph import skeleton_size
    from fedskel.targets import get_target

    from common import keep_freed_memory, timed_burst, write_json

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    target = get_target("host")
    builds = {"kernels": lambda mod: UseConvKernels(target.tvm_target)(mod)}
    if args.tvm_default:
        builds["tvm_default"] = lambda mod: mod

    def vm_of(mod):
        return relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target.tvm_target)), tvm.cpu())

    layers = []
    for index, (cin, cout, kernel, stride, size, count) in enumerate(RESNET18_CONVS):
        pad = kernel // 2
        for form, channels in (("full", cout), ("skeleton", skeleton_size(args.ratio, cout))):
            mod, dy_shape = single_conv_module(args.batch, cin, channels, size, kernel, stride, pad, 1, "float32")
            rng = np.random.default_rng(0)
            x = rng.standard_normal((args.batch, cin, size, size)).astype(np.float32)
            w = rng.standard_normal((channels, cin, kernel, kernel)).astype(np.float32)
            dy = rng.standard_normal(dy_shape).astype(np.float32)
            tx, tw, tdy = map(torch.from_numpy, (x, w, dy))

            def backward(mask):
                return lambda: torch.ops.aten.convolution_backward(tdy, tx, tw, None, [stride] * 2, [pad] * 2, [1, 1],
                                                                   False, [0, 0], 1, mask)

            torch_ops = {"forward": lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad),
                         "dgrad": backward([True, False, False]), "wgrad": backward([False, True, False])}
            inputs = {"forward": (x, w), "dgrad": (dy, w), "wgrad": (x, dy)}
            vms = {name: vm_of(build(mod)) for name, build in builds.items()}
            for op, torch_op in torch_ops.items():
                if form == "skeleton" and op == "forward":
                    continue  # the skeleton step's forward is the full forward
                if index == 0 and op == "dgrad":
                    continue  # the stem's dX is the image's gradient: no training step computes it
                tensors = [tvm.runtime.tensor(a) for a in inputs[op]]
                runs = {name: (lambda vm=vm: vm[op](*tensors)) for name, vm in vms.items()}
                runs["torch"] = torch_op
                samples = {name: [] for name in runs}
                for _ in range(args.rounds):
                    for name, fn in runs.items():
                        samples[name].append(timed_burst(fn, args.calls)[0])
                medians = {name: statistics.median(values) for name, values in samples.items()}
                row = {"layer": f"{cin}->{cout} k{kernel} s{stride} @{size}", "count": count, "form": form, "op": op,
                       "channels": channels, "ms": medians,
                       "vs_onednn": {name: medians[name] / medians["torch"] for name in builds}}
                layers.append(row)
                print(f"{row['layer']:24s} {form:8s} {op:7s} " + "  ".join(
                    f"{name} {medians[name]:8.2f} ms ({row['vs_onednn'].get(name, 1):.2f}x)" for name in runs), flush=True)
    write_json(args.out, {"benchmark": "conv_kernels", "batch": args.batch, "ratio": args.ratio, "threads": args.threads,
                          "target": target.tvm_target,
                          "method": f"median of {args.rounds} interleaved rounds of {args.calls} back-to-back calls, "
                          "the first untimed, freed memory kept (ms); "
                          "vs_onednn = time / PyTorch's", "layers": layers})
    plot(layers, args.out.removesuffix(".json") + ".png")


def plot(layers, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['layer']} {row['form'][:4]} {row['op']}" for row in layers]
    ratios = [row["vs_onednn"]["kernels"] for row in layers]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(labels) + 1.5))
    ax.barh(range(len(labels)), ratios, color=["tab:blue" if r <= 1.0 / 0.9 else "tab:red" for r in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time / oneDNN's (PyTorch eager), lower is better; red: slower than 0.9x oneDNN's speed")
    ax.set_title("FedSkel NHWC CONV kernels vs oneDNN, resnet18-CIFAR layers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
