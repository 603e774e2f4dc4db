"""Whole training step of a zoo model, full vs skeleton backward, against PyTorch eager.

Compiles the model once per ratio through the real pipeline and times ``train_step`` and
``train_step_skel`` with TVM's evaluator (median of repeats); PyTorch eager runs forward, cross-entropy,
backward and torch.optim.SGD on the same model and batch.  Output: JSON (see --out).

    python bench/train_step.py --model resnet18 --batch 32 --out bench/results/train_step_resnet18.json
"""

import argparse
import os

import torch

from fedskel.compiler.tuning_db import database_sha256
from fedskel.compiler.zoo import build_torch_model, zoo_model

from common import CompiledModel, compile_cached, time_torch_ms, write_json


def torch_step_ms(name, batch, repeat):
    model = build_torch_model(name).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, *zoo_model(name).input_shape)
    y = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return time_torch_ms(step, repeat)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--target", default="host")
    parser.add_argument("--tuning-db", help="MetaSchedule database to compile with")
    parser.add_argument("--cache", default="bench/.cache")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    options = {"tuning_db": args.tuning_db} if args.tuning_db else {}
    tag = f"tuned-{database_sha256(args.tuning_db)[:12]}" if args.tuning_db else "untuned"  # re-tuning re-compiles
    results = {"torch_eager_ms": torch_step_ms(args.model, args.batch, args.repeat), "ratios": {}}
    for ratio in args.ratios:
        path = os.path.join(args.cache, f"{args.model}-b{args.batch}-r{ratio}-{args.target}-{tag}.fsk")
        model = CompiledModel(compile_cached(args.model, path, target=args.target, ratio=ratio, batch_size=args.batch, **options))
        if "full_ms" not in results:
            results["full_ms"] = model.time_ms("train_step", args.repeat)
        skeleton = model.time_ms("train_step_skel", args.repeat)
        results["ratios"][str(ratio)] = {"skeleton_ms": skeleton, "speedup": results["full_ms"] / skeleton}
        print(f"{args.model} r={ratio}: step full {results['full_ms']:.1f} ms, skeleton {skeleton:.1f} ms "
              f"({results['full_ms'] / skeleton:.2f}x); torch eager {results['torch_eager_ms']:.1f} ms", flush=True)
    write_json(args.out, {"benchmark": "train_step", "model": args.model, "batch": args.batch, "target": args.target,
                          "tuned": bool(args.tuning_db), "method": "median of repeats (ms)", **results})


if __name__ == "__main__":
    main()
