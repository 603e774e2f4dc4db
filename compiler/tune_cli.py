"""``fedskel-tune``: tune a model's training kernels offline into a database that ``fedskel-compile --tuning-db`` applies.

Tune for the same model, ratio, batch size and target as the compile: records match kernels exactly.
"""

import argparse
import sys

from .errors import CompileError
from .pipeline import load_training_module, resolve_target
from .tuning import DEFAULT_COMMIT_EVERY, tune
from .tuning_db import check_database_dir, merge_databases
from .zoo import ZOO


def _parser():
    parser = argparse.ArgumentParser(
        prog="fedskel-tune",
        description="Tune a FedSkel training module with MetaSchedule (skeleton-step kernels first).",
        epilog="Over RPC: run `python -m tvm.exec.rpc_tracker --port 9190` here and "
        "`python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY` on the device, then pass --rpc HOST:9190 --rpc-key KEY.",
    )
    parser.add_argument("model", nargs="?", help=f"a zoo model ({', '.join(ZOO)}) or an ONNX file")
    parser.add_argument("--db", required=True, help="tuning database directory (created if missing)")
    parser.add_argument("--target", default="host", help="named target (fedskel-compile --list-targets)")
    parser.add_argument("--ratio", type=float, default=0.1, help="skeleton ratio r, as given to fedskel-compile")
    parser.add_argument("--batch-size", type=int, help="as given to fedskel-compile (zoo default 32)")
    parser.add_argument("--num-classes", type=int, help="when the output shape does not say")
    parser.add_argument("--seed", type=int, default=0, help="search seed (and zoo initial weights)")
    parser.add_argument("--trials", type=int, default=64, help="measurement budget of this run, over all kernels")
    parser.add_argument("--resume", action="store_true", help="extend an existing database instead of refusing it")
    parser.add_argument("--commit-every", type=int, default=DEFAULT_COMMIT_EVERY, metavar="K",
                        help="tune K kernels per MetaSchedule run, whose records are saved when it ends (a stop loses at most that run)")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="TVM RPC tracker through which to time on the device")
    parser.add_argument("--rpc-key", metavar="KEY", help="the device's key at the tracker")
    parser.add_argument("--merge", nargs="+", metavar="SRC", help="merge these databases into --db (best record per kernel) and exit")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        check_database_dir(args.db)
        if args.merge:
            kernels = merge_databases(args.db, *args.merge)
            print(f"merged {len(args.merge)} database(s) into {args.db}: {kernels} kernels, best record each")
            return 0
        if args.model is None:
            parser.error("a model is required (or --merge)")
        target_spec = resolve_target(args.target)
        _, training = load_training_module(args.model, args.ratio, args.batch_size, args.num_classes, args.seed,
                                           target=target_spec)
        tune(training.module, target_spec, args.db, args.trials, resume=args.resume, rpc=args.rpc, rpc_key=args.rpc_key,
             seed=args.seed, commit_every=args.commit_every)
    except CompileError as exc:
        print(f"fedskel-tune: error: {exc}", file=sys.stderr)
        return 2
    print(f"then: fedskel-compile {args.model} --target {args.target} --ratio {args.ratio}"
          f"{f' --batch-size {args.batch_size}' if args.batch_size else ''} --tuning-db {args.db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
