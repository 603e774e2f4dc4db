"""A simulation's record on disk (report.json, curves.png) and the comparison of several runs.

Reproducible numbers and wall times live in separate fields (``timings``), so two runs of the same
command can be compared exactly on everything else. Runs that differ only by seed are compared as one
result: mean and spread (fl/metrics.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from fedskel.fl.metrics import client_seconds_per_round, group_by_settings, mean_std, targets_summary
from fedskel.fl.strategies import get_strategy_class

REPORT = "report.json"
CURVES = "curves.png"
FORMAT_VERSION = 2
REPORTED_TARGET = "0.95"  # the time-to-accuracy column of comparison tables


def build_report(config: dict, result: dict) -> dict:
    """The report of one run: its configuration, the simulator's record, and a summary of both."""
    rounds, timings = result["rounds"], result["timings"]
    uplink = [r["uplink_bytes"] for r in rounds]
    downlink = [r["downlink_bytes"] for r in rounds]
    steps = {phase: [ms for t in timings for ms in t["step_ms"][phase]] for phase in timings[0]["step_ms"]}
    local = [r["mean_local_accuracy"] for r in rounds]
    measured = [a for a in local if a is not None]
    round_seconds = client_seconds_per_round(timings)
    rounds_to, seconds_to = targets_summary(local, round_seconds)
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        **{key: result[key] for key in ("settings", "clients", "rounds")},
        "summary": {
            "rounds": len(rounds),
            "final_mean_local_accuracy": rounds[-1]["mean_local_accuracy"],
            "final_global_accuracy": rounds[-1]["global_accuracy"],
            "best_mean_local_accuracy": max(measured) if measured else None,
            "best_round": 1 + local.index(max(measured)) if measured else None,
            "rounds_to_mean_local_accuracy": rounds_to,
            "total_uplink_bytes": int(sum(uplink)),
            # what FedAvg would have sent for the same accepted uploads
            "fedavg_uplink_bytes": int(result["whole_model_upload_bytes"] * sum(len(r["accepted"]) for r in rounds)),
            "total_downlink_bytes": int(sum(downlink)),
            "mean_uplink_bytes_per_round": float(np.mean(uplink)),
            "mean_downlink_bytes_per_round": float(np.mean(downlink)),
            "device_classes": device_class_accuracy(config, rounds),
        },
        "timings": {
            "total_seconds": float(sum(t["seconds"] for t in timings)),
            "client_step_seconds": float(sum(round_seconds)),
            # the modelled devices' wall time per round: its slowest client's local steps x its slowdown
            "mean_round_device_seconds": float(np.mean([t["device_seconds"] for t in timings])),
            "client_step_seconds_to_mean_local_accuracy": seconds_to,
            "mean_step_ms": {p: float(np.mean(v)) if v else None for p, v in steps.items()},
            "median_step_ms": {p: float(np.median(v)) if v else None for p, v in steps.items()},
            "steps": {p: len(v) for p, v in steps.items()},
            "rounds": timings,
        },
    }


def run_story(out_dir: str | Path, report: dict) -> str:
    """The lines a newcomer reads at the end of a run: accuracy reached, uplink against FedAvg's, the
    skeleton step's speed-up over the full-backward step (both measured in this run), and the plot."""
    summary, step_ms = report["summary"], report["timings"]["median_step_ms"]
    rounds = summary["rounds"]
    lines = [
        f"{out_dir}: {group_label(report)} seed={report['settings']['seed']}, {rounds} rounds",
        f"  mean local accuracy {_percent(summary['final_mean_local_accuracy'])} at round {rounds} "
        f"(best {_percent(summary['best_mean_local_accuracy'])} at round {summary['best_round']}); "
        f"stays >= {_pct(REPORTED_TARGET)} from round {summary['rounds_to_mean_local_accuracy'][REPORTED_TARGET] or '- (never)'}; "
        f"global model {_percent(summary['final_global_accuracy'])}",
        f"  uplink {summary['total_uplink_bytes'] / 1e6:.2f} MB = {100 * summary['total_uplink_bytes'] / summary['fedavg_uplink_bytes']:.1f}% "
        f"of FedAvg's {summary['fedavg_uplink_bytes'] / 1e6:.2f} MB for the same uploads",
    ]
    full = step_ms["full"] if step_ms["full"] is not None else step_ms["setskel"]
    if step_ms["updateskel"] is not None and full is not None:
        lines.append(f"  skeleton step {step_ms['updateskel']:.1f} ms vs full-backward step {full:.1f} ms "
                     f"({full / step_ms['updateskel']:.2f}x faster; medians, this run)")
    elif full is not None:
        lines.append(f"  full-backward step {full:.1f} ms (median)")
    lines.append(f"  plot: {Path(out_dir) / CURVES}")
    return "\n".join(lines)


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
    """Markdown, one row per group of runs equal but for the seed (mean ± std over seeds): final and best
    mean local accuracy, rounds and client step seconds until it stays >= 95%, traffic (uplink as % of what
    FedAvg would have sent for the same uploads, downlink as % of the first FedAvg group's), mean ms per step."""
    groups = group_by_settings(names, reports)
    reference = next((g for _, g in groups if g[0]["settings"]["strategy"] == "fedavg"), None)
    header = [
        "runs", "strategy", "r", "local", "SetSkel steps / re-select", "lr", "seeds", "mean local acc", "best", f"rounds to {_pct(REPORTED_TARGET)}",
        f"client s to {_pct(REPORTED_TARGET)}", "global acc", "uplink MB", "uplink % FedAvg", "downlink % FedAvg",
        "SetSkel ms/step", "UpdateSkel ms/step", "full ms/step",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group_names, group in groups:
        first = group[0]
        summaries = [r["summary"] for r in group]
        reached = [s["rounds_to_mean_local_accuracy"][REPORTED_TARGET] for s in summaries]
        seconds = [r["timings"]["client_step_seconds_to_mean_local_accuracy"][REPORTED_TARGET] for r in group]
        step_ms = {p: mean_std([r["timings"]["mean_step_ms"][p] for r in group])[0] for p in ("setskel", "updateskel", "full")}
        uplink = mean_std([s["total_uplink_bytes"] for s in summaries])[0]
        row = [
            group_names[0] if len(group_names) == 1 else f"{group_names[0]} +{len(group_names) - 1}",
            first["settings"]["strategy"],
            ratio_text(first) if first["settings"]["strategy"] == "fedskel" else "-",
            strategy_local(first),
            skeleton_schedule(first["settings"]),
            f"{first['settings']['lr']:g}",
            ",".join(str(r["settings"]["seed"]) for r in group),
            _spread([s["final_mean_local_accuracy"] for s in summaries], percent=True),
            _spread([s["best_mean_local_accuracy"] for s in summaries], percent=True),
            _reached(reached, "{:.1f}"),
            _reached(seconds, "{:.1f}"),
            _spread([s["final_global_accuracy"] for s in summaries], percent=True),
            f"{uplink / 1e6:.2f}",
            _spread([s["total_uplink_bytes"] / s["fedavg_uplink_bytes"] for s in summaries], percent=True),
            _share(group, reference, "total_downlink_bytes"),
            *("-" if step_ms[p] is None else f"{step_ms[p]:.1f}" for p in ("setskel", "updateskel", "full")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def skeleton_schedule(settings: dict) -> str:
    """FedSkel's SetSkel steps per selecting round and rounds between selections ("5 / 1", "5 / once")."""
    if settings["strategy"] != "fedskel":
        return "-"
    every = settings["reselect_every"]
    return f"{settings['setskel_steps']} / {'once' if every is None else every}"


def ratio_text(report: dict) -> str:
    """The skeleton ratio, or each device class's ("0.1/0.3/1") in a heterogeneous federation."""
    ratio = report["config"]["ratio"]
    return "/".join(f"{r:g}" for r in ratio) if isinstance(ratio, list) else f"{ratio:g}"


def device_class_accuracy(config: dict, rounds: list[dict]) -> list[dict] | None:
    """Per device class: its clients' mean local accuracy in the last round (None without classes)."""
    devices = config.get("devices")
    if not devices:
        return None
    final = rounds[-1]["local_accuracy"]
    rows = []
    for device in devices:
        measured = [final[c] for c in device["clients"] if final[c] is not None]
        rows.append({**device, "final_mean_local_accuracy": float(np.mean(measured)) if measured else None})
    return rows


def strategy_local(report: dict) -> str:
    """The personal-layer spec a run used (the strategy's default when the run named none)."""
    settings = report["settings"]
    return settings.get("local") or get_strategy_class(settings["strategy"]).default_local


def group_label(report: dict) -> str:
    """A run's settings in a few words: strategy, ratio, personal layers, lr."""
    settings = report["settings"]
    ratio = f" r={ratio_text(report)}" if settings["strategy"] == "fedskel" else ""
    devices = report["config"].get("devices")
    if devices:
        ratio += " devices " + "/".join(f"x{d['slowdown']:g}" for d in devices)
    wire = " fp16 wire" if settings["wire_dtype"] == "float16" else ""
    return f"{settings['strategy']}{ratio} local={strategy_local(report)} lr={settings['lr']:g}{wire}"


def plot_comparison(names: Sequence[str], reports: Sequence[dict], path: str | Path) -> None:
    """One colour per group of seeds: thin lines for each seed, a thick one for their mean; legend outside."""
    groups = group_by_settings(names, reports)
    figure = Figure(figsize=(15, 4.5 + 0.25 * len(groups)), layout="constrained")
    local, global_, uplink = figure.subplots(1, 3)
    colours = [f"C{i % 10}" for i in range(len(groups))]
    for (group_names, group), colour in zip(groups, colours):
        seeds = ",".join(str(r["settings"]["seed"]) for r in group)
        label = f"{group_label(group[0])} (seed {seeds})"
        for axes, series in ((local, _per_seed(group, "mean_local_accuracy")), (global_, _per_seed(group, "global_accuracy")),
                             (uplink, [np.cumsum([r["uplink_bytes"] for r in g["rounds"]]) / 1e6 for g in group])):
            width = min(len(s) for s in series)
            stacked = np.array([s[:width] for s in series])
            rounds = np.arange(1, width + 1)
            if len(group) > 1:
                for line in stacked:
                    axes.plot(rounds, line, color=colour, linewidth=0.6, alpha=0.45)
            axes.plot(rounds, np.nanmean(stacked, axis=0), color=colour, linewidth=2.0, label=label if axes is local else None)
    first = reports[0]["config"]
    figure.suptitle(f"{first['model']} on {first['dataset']}, {first['clients']} clients ({first['partition']}): "
                    "mean over seeds (thick), each seed (thin)")
    for axes, title, ylabel in ((local, "mean local test accuracy", "accuracy"), (global_, "global model, pooled test set", "accuracy"),
                                (uplink, "cumulative uplink", "MB")):
        axes.set_title(title)
        axes.set_xlabel("round")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=min(3, len(groups)), fontsize="small")
    figure.savefig(path, dpi=100)


def _per_seed(group: Sequence[dict], key: str) -> list[np.ndarray]:
    return [_series(report, key) for report in group]


def _plot_run(report: dict, path: Path) -> None:
    figure = Figure(figsize=(9, 4), layout="constrained")
    accuracy, traffic = figure.subplots(1, 2)
    rounds = [r["round"] for r in report["rounds"]]
    accuracy.plot(rounds, _series(report, "mean_local_accuracy"), label="mean local (own test split)")
    accuracy.plot(rounds, _series(report, "global_accuracy"), label="global (pooled test set)")
    traffic.plot(rounds, np.cumsum([r["uplink_bytes"] for r in report["rounds"]]) / 1e6, label="uplink")
    traffic.plot(rounds, np.cumsum([r["downlink_bytes"] for r in report["rounds"]]) / 1e6, label="downlink")
    _label(accuracy, f"{group_label(report)} seed={report['settings']['seed']}: accuracy", "accuracy")
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


def _pct(target: str) -> str:
    return f"{100 * float(target):g}%"


def _spread(values: Sequence[float | None], percent: bool = False) -> str:
    """"mean ± std" over seeds (just the value for one seed); "-" when there is none."""
    mean, std, _ = mean_std(values)
    if mean is None:
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    return f"{scale * mean:.1f}{unit}" + ("" if std is None else f" ± {scale * std:.1f}")


def _reached(values: Sequence[float | None], fmt: str) -> str:
    """Mean ± std over the seeds that reached the target, with how many did when not all."""
    mean, std, count = mean_std(values)
    if mean is None:
        return "never"
    text = fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std))
    return text if count == len(values) else f"{text} ({count}/{len(values)} seeds)"


def _share(group: Sequence[dict], reference: Sequence[dict] | None, key: str) -> str:
    """A group's mean traffic as a share of the FedAvg group's."""
    if not reference:
        return "-"
    ours = mean_std([r["summary"][key] for r in group])[0]
    theirs = mean_std([r["summary"][key] for r in reference])[0]
    return f"{100 * ours / theirs:.1f}%" if theirs else "-"
