"""Shared by the benchmarks: compiled functions timed by TVM's own evaluator, torch timed the same way."""

import ctypes
import json
import os
import platform
import statistics
import time

import numpy as np
import tvm

from fedskel.compiler.pipeline import compile_model
from fedskel.runtime.artifact import LIBRARY, PARAMS, read_artifact
from fedskel.runtime.library import open_library, virtual_machine
from fedskel.runtime.params_file import read_params


class CompiledModel:
    """An artifact's VM plus ready-made arguments for each of its functions."""

    def __init__(self, path, seed=0):
        self.manifest, members, _ = read_artifact(path)
        self.vm = virtual_machine(open_library(members[LIBRARY]), self.manifest, tvm.cpu())
        arrays = read_params(members[PARAMS], self.manifest)
        rng = np.random.default_rng(seed)
        t = lambda a: tvm.runtime.tensor(np.asarray(a, order="C"))
        m = self.manifest
        self.x = t(rng.standard_normal(m["input_shape"]).astype(np.float32))
        self.y = t(rng.integers(0, m["num_classes"], m["batch_size"]).astype(np.int64))
        self.params = [t(arrays[p["name"]]) for p in m["params"]]
        self.states = [t(arrays[s["name"]]) for s in m["states"]]
        self.velocities = [t(np.zeros(p["shape"], np.float32)) for p in m["params"]]
        self.skeleton = [t(np.sort(rng.permutation(c["out_channels"])[: c["k"]]).astype(np.int64)) for c in m["conv_layers"]]
        self.hyper = [t(np.float32(v)) for v in (0.01, 0.9, 0.0)]

    def args(self, function):
        return {
            "forward_train": [self.x, *self.params, *self.states],
            "gradients": [self.x, *self.params, *self.states, self.y],
            "gradients_skel": [self.x, *self.params, *self.states, self.y, *self.skeleton],
            "train_step": [self.x, self.y, *self.hyper, *self.params, *self.states, *self.velocities],
            "train_step_skel": [self.x, self.y, *self.hyper, *self.params, *self.states, *self.velocities, *self.skeleton],
        }[function]


def time_torch_ms(fn, repeat=5):
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


# pause before each timed burst: the last library's idle threads spin (OpenMP, TVM's pool) and would take the
# next one's cores (without it, digits-cnn's full step, timed right after PyTorch's, read 4.9 ms in one run
# and 12.8 ms in the next)
SETTLE_S = 0.25
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def keep_freed_memory():
    """Let glibc keep freed blocks instead of returning them to the OS, as a long-running trainer's heap does.

    Without it PyTorch eager maps every large temporary afresh: in this VM a 4 MB dX costs ~3,000 page faults a
    call (1.0 ms -> 5 ms), which is the allocator's time, not oneDNN's.  TVM's VM pools its own memory either way.
    """
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)):
        raise RuntimeError("glibc refused mallopt")


def timed_burst(fn, calls):
    """Wall and process-CPU ms of ``fn``: after the settle pause, ``calls`` back-to-back calls, the first untimed.

    The first call after an idle pause pays the cores' wake-up (1-10 ms in this VM, either library); a training
    loop never idles, so the median of the following calls is the step's time."""
    if calls < 2:
        raise ValueError(f"--calls {calls}: a burst needs at least 2 calls (the first is untimed)")
    time.sleep(SETTLE_S)
    fn()
    wall, cpu = [], []
    for _ in range(calls - 1):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start_wall) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def compile_cached(model, path, **options):
    if not os.path.exists(path):
        compile_model(model, path, **options)
    return path


def cpu_model():
    """The CPU's name from /proc/cpuinfo (these VMs move between Intel and AMD hosts, which time differently)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path, payload):
    import torch

    payload = {
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "tvm": tvm.__version__, "torch": torch.__version__},
        **payload,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
