"""Tuning databases on disk: open one with a clear error, fingerprint it, merge several into one.

A database is a directory holding MetaSchedule's two JSON-lines files (workloads, tuning records): the
format ``tvm.s_tir.meta_schedule`` reads and appends to, so a tuning run can stop and resume at any record.
"""

import hashlib
import os
import shutil
import tempfile

from tvm.s_tir import meta_schedule as ms

from .errors import CompileError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
FILES = (WORKLOADS, RECORDS)


def has_records(db_dir):
    """True when ``db_dir`` holds a database with at least one tuning record."""
    path = os.path.join(db_dir, RECORDS)
    return os.path.isfile(path) and os.path.getsize(path) > 0


def check_database_dir(db_dir):
    """CompileError when ``db_dir`` exists and is not a directory (checked before any tuning starts)."""
    if os.path.exists(db_dir) and not os.path.isdir(db_dir):
        raise CompileError(f"tuning database {db_dir} is a file; a database is a directory (give a new or existing directory)")


def open_database(db_dir, create=False):
    """The JSONDatabase in ``db_dir``; CompileError when it is missing (unless ``create``) or unreadable."""
    check_database_dir(db_dir)
    missing = [name for name in FILES if not os.path.isfile(os.path.join(db_dir, name))]
    if missing and not create:
        raise CompileError(f"tuning database {db_dir}: missing {', '.join(missing)} (run fedskel-tune first)")
    os.makedirs(db_dir, exist_ok=True)
    try:
        return ms.database.JSONDatabase(work_dir=db_dir, allow_missing=create)
    except (RuntimeError, ValueError, TypeError) as exc:  # TVM raises built-ins on a malformed line
        raise CompileError(f"tuning database {db_dir} is corrupt ({str(exc).strip().splitlines()[-1]})") from None


def database_sha256(db_dir):
    """One hash over both files, so a manifest names exactly the records its kernels came from."""
    digest = hashlib.sha256()
    for name in FILES:
        with open(os.path.join(db_dir, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read())
    return digest.hexdigest()


def merge_databases(dst, *srcs):
    """Merge ``srcs`` (and ``dst`` if it exists) into ``dst``, keeping the fastest record per workload.

    Workloads are matched structurally, so records of the same kernel from different runs compete and
    only the best survives; records for different targets are refused (their times are not comparable).
    ``dst`` is replaced atomically (files written next to it, then renamed). Returns the number of
    workloads in the merged database.
    """
    if not srcs:
        raise CompileError("merge_databases: no source database given")
    sources = ([dst] if has_records(dst) else []) + list(srcs)
    merged = ms.database.MemoryDatabase()
    targets = {}
    for src in sources:
        for record in open_database(src).get_all_tuning_records():
            targets.setdefault(str(record.target), src)
            if len(targets) > 1:
                raise CompileError(f"cannot merge tuning databases for different targets: {' and '.join(targets.values())}")
            workload = merged.commit_workload(record.workload.mod)
            merged.commit_tuning_record(
                ms.database.TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)
            )
    os.makedirs(dst, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".merge-", dir=dst)
    try:
        merged.dump_pruned(ms.database.JSONDatabase(work_dir=staging, allow_missing=True))
        for name in FILES:
            os.replace(os.path.join(staging, name), os.path.join(dst, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(open_database(dst).get_all_tuning_records())
