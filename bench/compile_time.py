"""How long ``fedskel-compile`` takes per model on this machine: the zoo and torchvision's classification models.

    python bench/compile_time.py                          # every model, host target, float32, batch 4, 3x32x32
    python bench/compile_time.py torchvision:mobilenet_v2 # some of them

Each model is compiled by the real CLI in its own process (so one model's memory does not weigh on the next),
timed end to end (export, training graph, kernels, TVM build, link, signed artifact), with the process's peak
memory. Results: bench/results/compile_time.json, merged into what is there; the README's table comes from it
(bench/readme_tables.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from fedskel.compiler.torchvision_zoo import MODELS, PREFIX
from fedskel.compiler.zoo import ZOO
from fedskel.runtime.artifact import read_artifact

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compile_time.json")
DEFAULT_MODELS = [*ZOO, *(PREFIX + name for name in MODELS)]
BATCH, RATIO, INPUT_SHAPE, CLASSES = 4, 0.1, "3x32x32", 10  # the input shape and classes of torchvision models


def compile_argv(model, output):
    argv = [sys.executable, "-m", "fedskel.compiler.cli", model, "-o", output, "--batch-size", str(BATCH), "--ratio", str(RATIO)]
    if model.startswith(PREFIX):
        argv += ["--num-classes", str(CLASSES), "--input-shape", INPUT_SHAPE]
    return argv


def time_compile(model):
    """{seconds, peak_rss_mb, artifact_mb, input_shape, conv_layers} of one fedskel-compile run of ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "model.fsk")
        with open(os.path.join(tmp, "log"), "w+") as log:
            start = time.perf_counter()
            process = subprocess.Popen(compile_argv(model, output), stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
            seconds = time.perf_counter() - start
            if os.waitstatus_to_exitcode(status) != 0:
                log.seek(0)
                raise SystemExit(f"{model}: fedskel-compile failed:\n{log.read()[-2000:]}")
        manifest = read_artifact(output).manifest
        return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
                "artifact_mb": round(os.path.getsize(output) / 2**20, 1), "input_shape": manifest["input_shape"],
                "conv_layers": len(manifest["conv_layers"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    args = parser.parse_args()
    results = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as handle:
            results = json.load(handle)
    settings = {"target": "host", "dtype": "float32", "batch": BATCH, "ratio": RATIO, "cpus": os.cpu_count()}
    for model in args.models:
        load = os.getloadavg()[0]
        entry = {**time_compile(model), **settings, "load_average_before": round(load, 2)}
        results[model] = entry
        print(model, entry, flush=True)
        with open(RESULTS + ".tmp", "w") as handle:
            json.dump(results, handle, indent=1)
        os.replace(RESULTS + ".tmp", RESULTS)


if __name__ == "__main__":
    main()
