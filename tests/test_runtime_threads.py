"""The runtime trains on one thread per physical core unless the user set TVM's thread count."""

import os
import subprocess
import sys

from fedskel.runtime.threads import default_threads, physical_cores


def write_topology(root, cores):
    """A /sys/devices/system/cpu tree: cpu i sits on (package, core) cores[i]."""
    for cpu, (package, core) in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")


def test_hyper_threads_of_one_core_count_once(tmp_path):
    write_topology(tmp_path, [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0)])
    assert physical_cores(range(6), sys_cpu=tmp_path) == 3
    assert physical_cores([0, 1], sys_cpu=tmp_path) == 1  # the affinity decides which CPUs count
    assert physical_cores([1, 2, 4], sys_cpu=tmp_path) == 3


def test_unreadable_topology_counts_cpus(tmp_path):
    assert physical_cores([0, 1, 2], sys_cpu=tmp_path / "missing") == 3


def test_a_thread_count_the_user_set_is_kept():
    assert default_threads({"TVM_NUM_THREADS": "3"}) == 3
    environ = {"OMP_NUM_THREADS": "5"}
    assert default_threads(environ) == 5 and "TVM_NUM_THREADS" not in environ
    environ = {}
    assert default_threads(environ) == physical_cores() and environ["TVM_NUM_THREADS"] == str(physical_cores())


def run_fresh(code, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True,
                            check=True, timeout=120)
    return int(result.stdout.split()[-1])


def test_tvm_pool_takes_the_physical_cores_once_the_runtime_is_imported():
    code = "import fedskel.runtime, tvm; print(tvm.runtime.num_threads())"
    assert run_fresh(code) == physical_cores()
    assert run_fresh(code, TVM_NUM_THREADS="1") == 1
