"""Whole training step of a zoo model, full and skeleton, against PyTorch eager, side by side in one run.

Compiles the model once per ratio through the real pipeline (hand-scheduled CONV kernels unless
``--no-conv-kernels``; ``--tuning-db`` applies a database) and runs interleaved rounds: each round times
PyTorch eager (forward, cross-entropy, backward, torch.optim.SGD on the same model and batch), the compiled
``train_step`` and every ratio's ``train_step_skel``, in wall time and process CPU time.  Medians per
column; ``--threads`` sets TVM's and torch's thread counts alike.  Output: JSON (see --out).

    python bench/train_step.py --model resnet18 --batch 32 --ratios 0.1 0.3 --threads 2 \
        --out bench/results/train_step_resnet18-b32-t2.json
"""

import argparse
import os
import statistics


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2, help="calls per round and library, the first untimed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="host")
    parser.add_argument("--tuning-db", help="MetaSchedule database to compile with")
    parser.add_argument("--no-conv-kernels", dest="conv_kernels", action="store_false", help="TVM's own CONV lowering")
    parser.add_argument("--cache", default="bench/.cache")
    parser.add_argument("--out", default="bench/results/train_step.json")
    return parser.parse_args()


def main():
    args = parse()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    import torch

    from fedskel.compiler.tuning_db import database_sha256
    from fedskel.compiler.zoo import build_torch_model, zoo_model

    from common import CompiledModel, compile_cached, keep_freed_memory, timed_burst, write_json

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    options = {"tuning_db": args.tuning_db} if args.tuning_db else {}
    tag = (f"tuned-{database_sha256(args.tuning_db)[:12]}" if args.tuning_db else "untuned") + \
        ("" if args.conv_kernels else "-tvmconv")
    models = {}
    for ratio in args.ratios:
        path = os.path.join(args.cache, f"{args.model}-b{args.batch}-r{ratio}-{args.target}-{tag}.fsk")
        models[ratio] = CompiledModel(compile_cached(args.model, path, target=args.target, ratio=ratio,
                                                     batch_size=args.batch, conv_kernels=args.conv_kernels, **options))
    torch_model = build_torch_model(args.model).train()
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, *zoo_model(args.model).input_shape)
    y = torch.randint(0, 10, (args.batch,))

    def torch_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(torch_model(x), y).backward()
        optimizer.step()

    first = models[args.ratios[0]]
    runs = {"torch_full": torch_step, "full": lambda: first.vm["train_step"](*first.args("train_step"))}
    for ratio, model in models.items():
        runs[f"skeleton_r{ratio}"] = lambda model=model: model.vm["train_step_skel"](*model.args("train_step_skel"))
    wall, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            round_wall, round_cpu = timed_burst(fn, args.calls)
            wall[name].append(round_wall)
            cpu[name].append(round_cpu)
    medians = {name: {"wall_ms": statistics.median(wall[name]), "cpu_ms": statistics.median(cpu[name])} for name in runs}
    torch_ms = medians["torch_full"]["wall_ms"]
    for name, entry in medians.items():
        entry["torch_full_over_this"] = torch_ms / entry["wall_ms"]  # > 1: faster than PyTorch's full step
        print(f"{args.model} b{args.batch} t{args.threads} {name:16s} wall {entry['wall_ms']:9.2f} ms  "
              f"cpu {entry['cpu_ms']:9.2f} ms  PyTorch full / this = {entry['torch_full_over_this']:.2f}", flush=True)
    write_json(args.out, {"benchmark": "train_step", "model": args.model, "batch": args.batch, "target": args.target,
                          "threads": args.threads, "tuned": bool(args.tuning_db), "conv_kernels": args.conv_kernels,
                          "method": f"median of {args.rounds} interleaved rounds, each {args.calls} back-to-back "
                          "calls after a settle pause, the first untimed; freed memory kept (keep_freed_memory)",
                          "steps": medians,
                          "samples_wall_ms": wall})


if __name__ == "__main__":
    main()
