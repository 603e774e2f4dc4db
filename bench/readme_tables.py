"""The README's speed tables, generated from the JSON in bench/results/ (so the README quotes measurements only).

    python bench/readme_tables.py   # prints Markdown; paste it under "Speed" (and "Compile time") in README.md
"""

import glob
import json
import os
import statistics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def train_step_table():
    rows = ["| model, batch | threads | PyTorch full | FedSkel full | skeleton r = 0.1 | skeleton r = 0.3 |",
            "|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(RESULTS, "train_step_*-t[0-9].json"))):
        with open(path) as handle:
            run = json.load(handle)
        steps = run["steps"]

        def cell(name):
            if name not in steps:
                return "-"
            entry = steps[name]
            return f"{entry['wall_ms']:.1f} ms ({entry['torch_full_over_this']:.2f}x)"

        rows.append(f"| {run['model']}, {run['batch']} | {run['threads']} | {steps['torch_full']['wall_ms']:.1f} ms | "
                    f"{cell('full')} | {cell('skeleton_r0.1')} | {cell('skeleton_r0.3')} |")
    return "\n".join(rows)


def _results(name):
    """The JSON of bench/results/``name``, or None before that benchmark has run."""
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def conv_kernel_table():
    run = _results("conv_kernels.json")
    if run is None:
        return ""
    classes = {}
    for layer in run["layers"]:
        classes.setdefault(f"{layer['op']} ({layer['form']})", []).append(layer)
    rows = ["| kernel class | time / oneDNN's: min | median | max | resnet18 total (layer x count) |", "|---|---|---|---|---|"]
    for label, layers in classes.items():
        ratios = [layer["vs_onednn"]["kernels"] for layer in layers]
        ours = sum(layer["ms"]["kernels"] * layer["count"] for layer in layers)
        theirs = sum(layer["ms"]["torch"] * layer["count"] for layer in layers)
        rows.append(f"| {label} | {min(ratios):.2f} | {statistics.median(ratios):.2f} | {max(ratios):.2f} | "
                    f"{ours:.0f} ms vs {theirs:.0f} ms ({ours / theirs:.2f}) |")
    return "\n".join(rows)


def compile_time_table():
    """fedskel-compile's time per model (bench/compile_time.py)."""
    runs = _results("compile_time.json")
    if runs is None:
        return ""
    rows = ["| model | input (batch 4) | CONV layers | compile s | peak memory MB | artifact MB | load average before |",
            "|---|---|---|---|---|---|---|"]
    for model, run in runs.items():
        shape = "x".join(map(str, run["input_shape"][1:]))
        rows.append(f"| {model} | {shape} | {run['conv_layers']} | {run['seconds']:.0f} | {run['peak_rss_mb']} "
                    f"| {run['artifact_mb']:.1f} | {run['load_average_before']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(train_step_table())
    print()
    print(conv_kernel_table())
    print()
    print(compile_time_table())
