"""A simulation's record on disk (report.json, curves.png) and the comparison of several runs.

Reproducible numbers and wall times live in separate fields (``timings``), so two runs of the same
command can be compared exactly on everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

REPORT = "report.json"
CURVES = "curves.png"
FORMAT_VERSION = 1


def build_report(config: dict, result: dict) -> dict:
    """The report of one run: its configuration, the simulator's record, and a summary of both."""
    rounds, timings = result["rounds"], result["timings"]
    uplink = [r["uplink_bytes"] for r in rounds]
    downlink = [r["downlink_bytes"] for r in rounds]
    steps = {phase: [ms for t in timings for ms in t["step_ms"][phase]] for phase in timings[0]["step_ms"]}
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        **{key: result[key] for key in ("settings", "clients", "rounds")},
        "summary": {
            "rounds": len(rounds),
            "final_mean_local_accuracy": rounds[-1]["mean_local_accuracy"],
            "final_global_accuracy": rounds[-1]["global_accuracy"],
            "total_uplink_bytes": int(sum(uplink)),
            "total_downlink_bytes": int(sum(downlink)),
            "mean_uplink_bytes_per_round": float(np.mean(uplink)),
            "mean_downlink_bytes_per_round": float(np.mean(downlink)),
        },
        "timings": {
            "total_seconds": float(sum(t["seconds"] for t in timings)),
            "mean_step_ms": {p: float(np.mean(v)) if v else None for p, v in steps.items()},
            "median_step_ms": {p: float(np.median(v)) if v else None for p, v in steps.items()},
            "steps": {p: len(v) for p, v in steps.items()},
            "rounds": timings,
        },
    }


def write_run(out_dir: str | Path, report: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT).write_text(json.dumps(report, indent=1))
    _plot_run(report, out_dir / CURVES)


def load_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {REPORT})")
    try:
        report = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if report.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: report format {report.get('format_version')!r}, this tool reads {FORMAT_VERSION}")
    return report


def comparison_table(names: Sequence[str], reports: Sequence[dict]) -> str:
    """Markdown: final accuracies, traffic (and as % of the first FedAvg run's), mean ms per local step."""
    reference = next((r["summary"] for r in reports if r["settings"]["strategy"] == "fedavg"), None)
    header = [
        "run", "strategy", "r", "mean local acc", "global acc", "uplink MB", "downlink MB",
        "uplink % FedAvg", "downlink % FedAvg", "SetSkel ms/step", "UpdateSkel ms/step", "full ms/step",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in zip(names, reports):
        summary, strategy = report["summary"], report["settings"]["strategy"]
        step_ms = report["timings"]["mean_step_ms"]
        row = [
            name,
            strategy,
            f"{report['config']['ratio']:g}" if strategy == "fedskel" else "-",
            _percent(summary["final_mean_local_accuracy"]),
            _percent(summary["final_global_accuracy"]),
            f"{summary['total_uplink_bytes'] / 1e6:.2f}",
            f"{summary['total_downlink_bytes'] / 1e6:.2f}",
            _share(summary["total_uplink_bytes"], reference and reference["total_uplink_bytes"]),
            _share(summary["total_downlink_bytes"], reference and reference["total_downlink_bytes"]),
            *(f"{step_ms[p]:.1f}" if step_ms[p] is not None else "-" for p in ("setskel", "updateskel", "full")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_comparison(names: Sequence[str], reports: Sequence[dict], path: str | Path) -> None:
    figure = Figure(figsize=(12, 4), layout="constrained")
    local, global_, uplink = figure.subplots(1, 3)
    for name, report in zip(names, reports):
        rounds = [r["round"] for r in report["rounds"]]
        local.plot(rounds, _series(report, "mean_local_accuracy"), label=name)
        global_.plot(rounds, _series(report, "global_accuracy"), label=name)
        uplink.plot(rounds, np.cumsum([r["uplink_bytes"] for r in report["rounds"]]) / 1e6, label=name)
    _label(local, "mean local test accuracy", "accuracy")
    _label(global_, "global model, pooled test set", "accuracy")
    _label(uplink, "cumulative uplink", "MB")
    figure.savefig(path, dpi=100)


def _plot_run(report: dict, path: Path) -> None:
    figure = Figure(figsize=(9, 4), layout="constrained")
    accuracy, traffic = figure.subplots(1, 2)
    rounds = [r["round"] for r in report["rounds"]]
    accuracy.plot(rounds, _series(report, "mean_local_accuracy"), label="mean local (own test split)")
    accuracy.plot(rounds, _series(report, "global_accuracy"), label="global (pooled test set)")
    traffic.plot(rounds, np.cumsum([r["uplink_bytes"] for r in report["rounds"]]) / 1e6, label="uplink")
    traffic.plot(rounds, np.cumsum([r["downlink_bytes"] for r in report["rounds"]]) / 1e6, label="downlink")
    _label(accuracy, f"{report['settings']['strategy']}: accuracy", "accuracy")
    _label(traffic, "cumulative traffic", "MB")
    figure.savefig(path, dpi=100)


def _series(report: dict, key: str) -> np.ndarray:
    """A per-round value as floats; a round without one (None) is a gap in the curve."""
    return np.array([np.nan if r[key] is None else r[key] for r in report["rounds"]], dtype=float)


def _label(axes, title: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize="small")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _share(value: int, reference: int | None) -> str:
    return "-" if not reference else f"{100 * value / reference:.1f}%"
