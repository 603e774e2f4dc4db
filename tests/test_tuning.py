"""Offline tuning: real MetaSchedule runs (a few trials) on digits-cnn, the records applied by the compiler.

The first tuning run in a process pays a one-off ~40-60 s (MetaSchedule registers every tensor intrinsic);
each run after it costs a round or two (~20 s a round here), so every test tunes a handful of trials.
"""

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from fedskel.compiler.cli import main as compile_cli
from fedskel.compiler.errors import CompileError
from fedskel.compiler.pipeline import compile_model, load_training_module, resolve_target
from fedskel.compiler.tune_cli import main as tune_cli
from fedskel.compiler.tuning import apply_database, tune
from fedskel.compiler.tuning_db import RECORDS, database_sha256, merge_databases, open_database
from fedskel.compiler.tuning_tasks import lower_for_tuning, tuning_tasks
from fedskel.runtime import load

MODEL = {"ratio": 0.3, "batch_size": 4}


@pytest.fixture(scope="module")
def host():
    """The host target with 2-trial rounds: a round's search then takes ~2 s instead of ~10 s."""
    return dataclasses.replace(resolve_target("host"), tuning={"trials_per_iter": 2})


@pytest.fixture(scope="module")
def training_module():
    return load_training_module("digits-cnn", **MODEL, target="host")[1].module


@pytest.fixture(scope="module")
def tuned(training_module, host, tmp_path_factory):
    """A database with 2 trials, and the table and progress tune() printed."""
    db = str(tmp_path_factory.mktemp("tuning") / "digits-cnn-host")
    out = io.StringIO()
    rows = tune(training_module, host, db, trials=2, out=out)
    return db, rows, out.getvalue()


@pytest.fixture(scope="module")
def resumed(training_module, host, tuned, tmp_path_factory):
    """A copy of ``tuned`` extended by a resumed run of 2 more trials."""
    db = str(tmp_path_factory.mktemp("resumed") / "db")
    shutil.copytree(tuned[0], db)
    rows = tune(training_module, host, db, trials=2, resume=True, out=io.StringIO())
    return db, rows


def record_count(db):
    with open(os.path.join(db, RECORDS)) as handle:
        return sum(1 for line in handle if line.strip())


def best_seconds(db):
    """{kernel (as TVMScript): best mean run time} over every record in ``db``."""
    best = {}
    for record in open_database(db).get_all_tuning_records():
        key = record.workload.mod.script()
        seconds = float(np.mean([float(s) for s in record.run_secs]))
        best[key] = min(best.get(key, seconds), seconds)
    return best


def test_budget_goes_to_the_skeleton_kernels_first(tuned):
    db, rows, printed = tuned
    tunable = [row for row in rows if not row["note"].startswith("not tuned")]
    first = tunable[0]
    assert first["uses"] == "skeleton"
    assert first["trials"] == 2 and first["best_s"] > 0
    assert [row["kernel"] for row in rows if row["trials"]] == [first["kernel"]]
    assert record_count(db) == 2
    untunable = {row["kernel"] for row in rows if row["note"] == "not tuned: index inputs"}
    assert any(name.startswith("take") for name in untunable) and any(name.startswith("scatter_nd") for name in untunable)
    hand_scheduled = [row for row in rows if row["note"] == "not tuned: hand-scheduled"]
    assert all(any(kind in row["kernel"] for row in hand_scheduled) for kind in ("conv_forward", "conv_dgrad", "conv_wgrad"))
    assert all(row["trials"] == 0 for row in hand_scheduled)
    assert first["kernel"] in printed and "GFLOPS" in printed
    assert re.search(r"\n1 of \d+ kernels have a tuned schedule", printed)


def test_compile_applies_the_records_and_keeps_the_gradients(tuned, artifact, tmp_path):
    db = tuned[0]
    manifest = compile_model("digits-cnn", tmp_path / "tuned.fsk", tuning_db=db, **MODEL)
    hand_scheduled = sum(row["note"] == "not tuned: hand-scheduled" for row in tuned[1])
    assert manifest["tuning"]["tuned_tasks"] == 1 and manifest["tuning"]["total_tasks"] == len(tuned[1]) - hand_scheduled
    assert manifest["tuning"]["database_sha256"] == database_sha256(db)

    untuned_path = artifact("digits-cnn", **MODEL)
    untuned, tuned_trainer = load(untuned_path), load(tmp_path / "tuned.fsk")
    assert untuned.manifest["tuning"] is None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 3, 5, 9])
    skeleton = {layer["weight"]: np.sort(rng.permutation(layer["out_channels"])[: layer["k"]])
                for layer in manifest["conv_layers"]}
    for chosen in (None, skeleton):
        want, got = untuned.gradients(x, y, chosen), tuned_trainer.gradients(x, y, chosen)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    losses = [(untuned.train_step(x, y, skeleton), tuned_trainer.train_step(x, y, skeleton)) for _ in range(3)]
    np.testing.assert_allclose(*zip(*losses), rtol=1e-5)


def test_tuned_kernels_keep_their_schedules_through_the_build(training_module, tmp_path):
    """tvm.compile fuses again, and FuseOps re-wraps multi-output kernels (SGD updates) under new names.

    Every tunable kernel gets a record (its default schedule: a trace that only looks up the root block;
    MetaSchedule never returns a record with an empty trace), and after the build's own legalize-and-fuse
    passes every one of them must still be called, under its name and scheduled.
    """
    spec = resolve_target("host")
    target = spec.tvm()
    db_dir = str(tmp_path / "every-kernel")
    database = open_database(db_dir, create=True)
    tasks = [task for task in tuning_tasks(lower_for_tuning(training_module, target), target) if task.tunable]
    for task in tasks:
        workload = database.commit_workload(task.workload)
        schedule = tvm.s_tir.Schedule(task.workload)
        schedule.get_sblock("root")
        args = ms.arg_info.ArgInfo.from_prim_func(task.workload["main"])
        database.commit_tuning_record(ms.database.TuningRecord(schedule.trace, workload, [1e-3], target, args))
    applied, info = apply_database(training_module, spec, db_dir)
    assert info["tuned_tasks"] == len(tasks)
    with target:
        built = tvm.transform.Sequential(relax.pipeline.legalize_passes(target))(applied)
    called = set()
    for func in built.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: called.add(e.name_hint) if isinstance(e, tvm.ir.GlobalVar) else None)
    assert {task.name for task in tasks} <= called
    assert all(int(built[name].attrs["tirx.is_scheduled"]) for name in (task.name for task in tasks))


def test_fresh_run_refuses_a_database_with_records(training_module, host, tuned):
    with pytest.raises(CompileError, match="already has records: resume it"):
        tune(training_module, host, tuned[0], trials=1, out=io.StringIO())


def test_resume_extends_the_database_starting_with_untuned_kernels(tuned, resumed):
    assert record_count(resumed[0]) == record_count(tuned[0]) + 2
    before, after = ({row["kernel"]: row["trials"] for row in rows} for rows in (tuned[1], resumed[1]))
    grown = {name for name in after if after[name] != before[name]}
    first, second = [row["kernel"] for row in resumed[1] if not row["note"].startswith("not tuned")][:2]
    assert grown == {second} and after[second] == 2  # the next kernel in line
    assert after[first] == 2  # kept, not re-tuned


def test_a_stopped_run_keeps_the_kernels_it_finished(tmp_path):
    """MetaSchedule saves a run's records only when the run ends; with one kernel per run, a tuner killed
    while it tunes the second kernel leaves the first one's records, and --resume goes on from there."""
    db = tmp_path / "db"
    command = [sys.executable, "-m", "fedskel.compiler.tune_cli", "digits-cnn", "--ratio", "0.3", "--batch-size", "4",
               "--trials", "16", "--commit-every", "1", "--db", str(db)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (os.path.exists(db / RECORDS) and record_count(db)):
            assert process.poll() is None, "the tuner ended before it could be stopped"
            assert time.monotonic() < deadline, "no records after 10 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    kernels = {record.workload.mod.script() for record in open_database(str(db)).get_all_tuning_records()}
    assert len(kernels) == 1
    out = io.StringIO()
    tune(load_training_module("digits-cnn", **MODEL, target="host")[1].module, resolve_target("host"), str(db),
         trials=8, resume=True, out=out)
    assert re.search(r"\n2 of \d+ kernels have a tuned schedule", out.getvalue())


def test_merge_keeps_the_best_record_per_kernel(tuned, resumed, tmp_path):
    merged = str(tmp_path / "merged")
    assert merge_databases(merged, tuned[0], resumed[0]) == 2
    assert record_count(merged) == 2  # one per kernel, from 2 + 4 records
    best = best_seconds(resumed[0])  # resumed holds tuned's records too
    assert best_seconds(merged) == best
    # merging into an existing database keeps its own records in the contest
    assert merge_databases(merged, tuned[0]) == 2 and best_seconds(merged) == best


def test_merge_refuses_records_of_another_target(tuned, tmp_path):
    """Times measured on different devices do not compete: the same records, relabelled for x86_64."""
    other = open_database(str(tmp_path / "x86_64"), create=True)
    for record in open_database(tuned[0]).get_all_tuning_records():
        workload = other.commit_workload(record.workload.mod)
        other.commit_tuning_record(ms.database.TuningRecord(
            record.trace, workload, record.run_secs, resolve_target("x86_64").tvm(), record.args_info))
    with pytest.raises(CompileError, match="different targets"):
        merge_databases(str(tmp_path / "merged"), tuned[0], str(tmp_path / "x86_64"))
    assert not (tmp_path / "merged").exists()


def test_missing_or_corrupt_database_is_refused(tmp_path, capsys):
    def refused(db, *needles):
        code = compile_cli(["digits-cnn", "--ratio", "0.3", "--batch-size", "4", "--tuning-db", str(db), "-o", str(tmp_path / "a.fsk")])
        err = capsys.readouterr().err
        assert code == 2, err
        for needle in needles:
            assert needle in err
        assert not (tmp_path / "a.fsk").exists()

    refused(tmp_path / "nowhere", "nowhere", "missing", "fedskel-tune")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "database_workload.json").write_text('["not a workload"]\n')
    (corrupt / RECORDS).write_text("[0, [truncated\n")
    refused(corrupt, "corrupt", str(corrupt))


def test_database_for_another_batch_size_is_refused(tuned, tmp_path):
    with pytest.raises(CompileError, match="no record for any kernel"):
        compile_model("digits-cnn", tmp_path / "b8.fsk", ratio=0.3, batch_size=8, tuning_db=tuned[0])
    assert not (tmp_path / "b8.fsk").exists()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def wait_for(ready, processes, failure, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        assert all(p.poll() is None for p in processes), f"{failure}: a process exited"
        assert time.monotonic() < deadline, failure
        time.sleep(0.2)


@contextlib.contextmanager
def rpc_device(key):
    """A TVM RPC tracker and one RPC server registered under ``key``, both real processes on 127.0.0.1."""
    tracker_port = free_port()
    server_port = free_port()
    processes = []

    def start(module, *args):
        # own session: each runs its loop in a child process, which must be stopped with it
        processes.append(subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", *map(str, args)],
                                          start_new_session=True))

    try:
        start("tvm.exec.rpc_tracker", "--port", tracker_port, "--port-end", tracker_port + 1)
        wait_for(lambda: listening(tracker_port), processes, "the RPC tracker did not listen")
        start("tvm.exec.rpc_server", "--port", server_port, "--port-end", server_port + 1,
              "--tracker", f"127.0.0.1:{tracker_port}", "--key", key)
        config = ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=tracker_port, tracker_key=key, session_timeout_sec=5)
        wait_for(lambda: config.count_num_servers() == 1, processes, "the RPC server did not register with the tracker")
        yield f"127.0.0.1:{tracker_port}"
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_tune_over_rpc_end_to_end(tmp_path, capsys):
    db = tmp_path / "rpc-db"
    with rpc_device("fedskel-test") as tracker:
        code = tune_cli(["digits-cnn", "--ratio", "0.3", "--batch-size", "4", "--trials", "1", "--db", str(db),
                         "--rpc", tracker, "--rpc-key", "fedskel-test"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"\n1 of \d+ kernels have a tuned schedule", out) and "--tuning-db" in out
    records = open_database(str(db)).get_all_tuning_records()
    assert len(records) == 1 and float(records[0].run_secs[0]) < 1.0  # timed on the server, not a failure (1e10)


def test_rpc_without_a_tracker_is_refused(tmp_path, capsys):
    code = tune_cli(["digits-cnn", "--batch-size", "4", "--db", str(tmp_path / "db"),
                     "--rpc", f"127.0.0.1:{free_port()}", "--rpc-key", "nobody"])
    assert code == 2 and "RPC tracker" in capsys.readouterr().err
