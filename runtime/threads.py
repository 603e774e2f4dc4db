"""How many threads the TVM runtime trains with: one per physical core this process may run on.

TVM sizes its thread pool once, when a thread first runs a parallel kernel, from $TVM_NUM_THREADS (else
$OMP_NUM_THREADS) or else half the logical CPUs on x86, on the guess that every core has two hyper-threads.
On a machine without SMT (most VMs, this 2-core one) that halves the cores a client trains on: resnet18's
step took 2x as long.  So unless the user chose, the runtime sets $TVM_NUM_THREADS to the physical cores
in this process's CPU affinity before any kernel runs.
"""

import os

_SYS_CPU = "/sys/devices/system/cpu"


def physical_cores(cpus=None, sys_cpu=_SYS_CPU):
    """Distinct (package, core) pairs among ``cpus`` (default: this process's affinity); where the topology
    cannot be read, the number of CPUs."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    cores = set()
    for cpu in cpus:
        try:
            with open(f"{sys_cpu}/cpu{cpu}/topology/physical_package_id") as package, \
                    open(f"{sys_cpu}/cpu{cpu}/topology/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return max(len(cpus), 1)
    return max(len(cores), 1)


def default_threads(environ=os.environ):
    """Set $TVM_NUM_THREADS to ``physical_cores()`` unless $TVM_NUM_THREADS or $OMP_NUM_THREADS is set;
    the count TVM will use (it takes effect for pools not yet started)."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if environ.get(name):
            return int(environ[name])
    environ["TVM_NUM_THREADS"] = str(physical_cores())
    return int(environ["TVM_NUM_THREADS"])
