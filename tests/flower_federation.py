"""Real Flower processes for tests: a flower-superlink, flower-supernode processes and `flwr run` of this
repository's app, all on 127.0.0.1 (insecure, free ports), with a FLWR_HOME of their own. Every process
started, and all that it spawns (SuperExec, ServerApp, ClientApps), is stopped by `stop()`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
FEDERATION = "deploy"


def free_ports(count):
    """Distinct ports nobody listens on (all held open at once, so no two are the same)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def stop_tree(pid, sig=signal.SIGTERM, grace=15.0):
    """Signal a process and all its descendants (found before any of them dies), then SIGKILL what is left."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in tree:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return tree


def _config_args(config):
    """Flower's ``key=value`` command-line form of a config (strings quoted, as TOML wants them)."""
    return " ".join(f"{key}='{value}'" if isinstance(value, str) else f"{key}={value}" for key, value in config.items())


class Federation:
    """A SuperLink and SuperNodes on 127.0.0.1 with a FLWR_HOME naming them as federation `deploy`.

    Use it as a context manager: leaving the block stops everything, also when a test fails.
    """

    def __init__(self, root: Path):
        self.logs = root / "logs"
        self.logs.mkdir()
        home = root / "flwr-home"
        home.mkdir()
        [self.superlink_port] = free_ports(1)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n'
            f'[superlink.{FEDERATION}]\naddress = "127.0.0.1:{self.superlink_port}"\ninsecure = true\n'
        )
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec, flwr-clientapp
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        self.processes: list[subprocess.Popen] = []
        self.nodes: list[subprocess.Popen] = []

    def _start(self, name, *command):
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start(self, num_nodes, node_configs=None):
        """``node_configs``: per node, more node config (e.g. its own ``artifact``) beside its partition."""
        node_configs = node_configs or [{}] * num_nodes
        link = self._start(
            "superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.superlink_port),
            "--isolation", "subprocess", "--disable-runtime-dependency-installation",
        )
        self._wait_for_port(self.superlink_port, link)
        for i, port in enumerate(free_ports(num_nodes)):  # each SuperNode serves its ClientApps on a port of its own
            self.nodes.append(self._start(
                f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.superlink_port}",
                "--port", str(port), "--node-config", _config_args({"partition-id": i, "num-partitions": num_nodes, **node_configs[i]}),
            ))

    def launch(self, run_config):
        """`flwr run . deploy --stream` from the repository root, as a user runs it."""
        return self._start("flwr-run", "flwr", "run", ".", FEDERATION, "--stream", "--run-config", _config_args(run_config))

    def finish(self, run, out: Path, timeout):
        """The run's report, once `flwr run` has returned."""
        try:
            run.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flwr run did not finish within {timeout} s:\n{self.tail('flwr-run')}")
        assert run.returncode == 0, self.tail("flwr-run")
        assert (out / "report.json").is_file(), f"the ServerApp wrote no report:\n{self.tail('flwr-run')}"
        return json.loads((out / "report.json").read_text())

    def wait_for_clientapp(self, node, timeout):
        """Block until SuperNode `node` runs a ClientApp: it has received a message and works on it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if any("flwr-clientapp" in " ".join(p.cmdline()) for p in psutil.Process(self.nodes[node].pid).children(recursive=True)):
                    return
            except psutil.Error:
                pass
            time.sleep(0.2)
        pytest.fail(f"SuperNode {node} started no ClientApp within {timeout} s:\n{self.tail(f'supernode{node}')}")

    def kill_node(self, node):
        """SIGKILL a SuperNode with its ClientApp: a device that vanishes without a word."""
        tree = stop_tree(self.nodes[node].pid, signal.SIGKILL, grace=10)
        assert tree and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)

    def node_id(self, node):
        """The Flower node id SuperNode `node` registered with (from its log)."""
        found = re.search(r"SuperNode ID: (\d+)", (self.logs / f"supernode{node}.log").read_text(errors="replace"))
        assert found, self.tail(f"supernode{node}")
        return int(found.group(1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process in reversed(self.processes):
            stop_tree(process.pid)
            process.wait(timeout=10)

    def tail(self, name, lines=60):
        return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])

    def _wait_for_port(self, port, process, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"flower-superlink exited with {process.returncode}:\n{self.tail('superlink')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        pytest.fail(f"flower-superlink did not listen on {port} within {timeout} s")
