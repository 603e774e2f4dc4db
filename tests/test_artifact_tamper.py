"""Tampered artifacts, made from one real compiled artifact: none loads, none crashes the process.

Every case is loaded twice in a worker subprocess (tests/load_worker.py), so a SIGSEGV or SIGBUS is
recorded as that case's outcome: once as a device loads by default (a trusted signature required), where
every case must be refused with ArtifactError; and once with ``allow_unsigned=True``, where the loader's
own checks must refuse it with the reason given here. A few edits are valid content (``None``: only the
signature can tell) or native code that no check short of the signature can judge (``SIGNATURE_ONLY``).
The worker's temporary directory must be empty afterwards: no copy of a library is left behind.
"""

import base64
import bz2
import gzip
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from artifact_edit import members_of, rebuilt, tar_of
from fedskel.runtime import ArtifactError, load
from fedskel.runtime.artifact import LIBRARY, MANIFEST, PARAMS, SIGNATURE
from fedskel.runtime.signing import default_signing_key, generate_key, public_key_line

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # the duplicate-entry npz is built on purpose

WORKER = Path(__file__).with_name("load_worker.py")
SIGNATURE_ONLY = "signature only"
NOT_AN_ARTIFACT = "not a FedSkel artifact"


# ---- building blocks -------------------------------------------------------------------------
def manifest_edit(edit):
    return lambda ctx: tar_of(rebuilt(ctx.good, edit_manifest=edit))


def member_edit(name, change):
    return lambda ctx: tar_of(rebuilt(ctx.good, edit_member=(name, lambda data: change(data, ctx))))


def raw_manifest(change):
    """The manifest's text changed as text (what json.dumps cannot write: NaN literals, duplicate keys)."""
    def build(ctx):
        entries = dict(ctx.good)  # the signature stays, and no longer matches
        entries[MANIFEST] = change(entries[MANIFEST])
        return tar_of(list(entries.items()))
    return build


def entries_edit(change):
    return lambda ctx: tar_of(change(list(ctx.good)))


def params_edit(change):
    """params.npz rewritten with ``change(arrays)`` applied (hash updated)."""
    def rewrite(data, ctx):
        with np.load(io.BytesIO(data)) as npz:
            arrays = {name: npz[name] for name in npz.files}
        change(arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    return member_edit(PARAMS, rewrite)


def set_path(manifest, path, value):
    *parents, last = path
    for key in parents:
        manifest = manifest[key]
    manifest[last] = value


def at(path, value):
    return manifest_edit(lambda m: set_path(m, path, value))


def elf_patch(offset, fmt, value):
    def patch(data, ctx):
        data = bytearray(data)
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)
    return member_edit(LIBRARY, patch)


def oversized_claim(ctx):
    """A model.so header claiming 2 GiB, followed by a few bytes: must be refused from the header alone."""
    return tar_of([(n, d, {"size": 2**31}) if n == LIBRARY else (n, d) for n, d in ctx.good])[: 2 * 2**20]


def zip_with(entries, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_entries(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def first_load_segment_filesz_offset(data):
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + 56 * i)[0] == 1:  # PT_LOAD
            return phoff + 56 * i + 32
    raise AssertionError("no PT_LOAD segment")


def truncate_library(fraction):
    return member_edit(LIBRARY, lambda data, ctx: data[: int(len(data) * fraction)])


def constructor_library(ctx):
    """A real shared object whose constructor writes a marker file: what a replaced model.so would do."""
    return tar_of(rebuilt(ctx.good, edit_member=(LIBRARY, lambda _: ctx.evil_library)))


def resigned_untrusted(ctx):
    return tar_of(rebuilt(ctx.good, edit_manifest=lambda m: set_path(m, ("optimizer", "lr"), 0.5), sign_with=ctx.stranger))


def signature_record(change):
    def build(ctx):
        entries = dict(ctx.good)
        record = json.loads(entries[SIGNATURE])
        entries[SIGNATURE] = change(record)
        return tar_of(list(entries.items()))
    return build


def flip_signature_bit(record):
    signature = bytearray(base64.b64decode(record["signature"]))
    signature[10] ^= 1
    return json.dumps(dict(record, signature=base64.b64encode(bytes(signature)).decode())).encode()


def deep(depth):
    tree = {}
    for _ in range(depth):
        tree = {"a": tree}
    return tree


TOP_LEVEL_KEYS = ["format_version", "model", "input_shape", "dtype", "batch_size", "num_classes", "params", "states",
                  "conv_layers", "ratio", "optimizer", "functions", "target", "tvm_version", "tuning", "sha256"]


# ---- the cases: id -> (build(ctx) -> file bytes, what the loader says under allow_unsigned) -----------
CASES = {
    # the file and the tar
    "empty-file": (lambda ctx: b"", NOT_AN_ARTIFACT),
    "random-bytes": (lambda ctx: np.random.default_rng(0).bytes(20000), NOT_AN_ARTIFACT),
    **{f"truncated-file-{f}": ((lambda f: lambda ctx: tar_of(ctx.good)[: int(len(tar_of(ctx.good)) * f)])(f),
                               "truncated|not a FedSkel artifact|missing|no manifest")
       for f in (0.0005, 0.002, 0.1, 0.5, 0.9)},
    "truncated-inside-last-member": (lambda ctx: tar_of(ctx.good)[:-2000], "truncated|not a FedSkel artifact"),
    "gzip": (lambda ctx: gzip.compress(tar_of(ctx.good)), "gzip-compressed"),
    "gzip-bomb": (lambda ctx: gzip.compress(tar_of([(LIBRARY, bytes(64 * 2**20))]), 1), "gzip-compressed"),
    "bzip2": (lambda ctx: bz2.compress(tar_of(ctx.good)), "bzip2-compressed"),
    "xz": (lambda ctx: lzma.compress(tar_of(ctx.good)), "xz-compressed"),
    "duplicate-manifest": (entries_edit(lambda e: e + [(MANIFEST, b"{}")]), "manifest.json appears twice"),
    "duplicate-library": (entries_edit(lambda e: e + [(LIBRARY, b"\x7fELF")]), "model.so appears twice"),
    "duplicate-params": (entries_edit(lambda e: [e[0], *[x for x in e if x[0] == PARAMS], *e[1:]]), "params.npz appears twice"),
    "unknown-member": (entries_edit(lambda e: e + [("run.sh", b"rm -rf /")]), "unexpected member 'run.sh'"),
    "path-traversal": (entries_edit(lambda e: [("../manifest.json", e[0][1]), *e[1:]]), "unexpected member"),
    "absolute-member": (entries_edit(lambda e: e + [("/etc/cron.d/x", b"x")]), "unexpected member"),
    "no-manifest": (entries_edit(lambda e: [x for x in e if x[0] != MANIFEST]), "no manifest.json"),
    "no-library": (entries_edit(lambda e: [x for x in e if x[0] != LIBRARY]), "member model.so is missing"),
    "no-params": (entries_edit(lambda e: [x for x in e if x[0] != PARAMS]), "member params.npz is missing"),
    **{f"library-as-{kind}": (entries_edit((lambda t: lambda e: [(n, d, {"type": t, "linkname": "/etc/passwd"}) if n == LIBRARY else (n, d)
                                                                 for n, d in e])(t)), "not a plain regular file")
       for kind, t in (("symlink", tarfile.SYMTYPE), ("hardlink", tarfile.LNKTYPE), ("directory", tarfile.DIRTYPE),
                       ("fifo", tarfile.FIFOTYPE), ("char-device", tarfile.CHRTYPE))},
    "pax-header": (lambda ctx: tar_of(ctx.good, pax_headers={"comment": "x" * 100}), "not a plain regular file"),
    "oversized-claim": (oversized_claim, "claims 2147483648 bytes"),
    "huge-manifest": (raw_manifest(lambda text: text + b" " * (2 * 2**20)), "manifest.json claims"),
    "huge-signature": (entries_edit(lambda e: [(n, d + b" " * 5000 if n == SIGNATURE else d) for n, d in e]),
                       "manifest.sig claims"),
    # signatures (content otherwise intact: allow_unsigned loads these, with a warning)
    "unsigned": (entries_edit(lambda e: [x for x in e if x[0] != SIGNATURE]), None),
    "signature-bit-flipped": (signature_record(flip_signature_bit), None),
    "manifest-edited-signature-kept": (raw_manifest(lambda t: t.replace(b'"model": "digits-cnn"', b'"model": "digits-cnm"')), None),
    "resigned-by-untrusted-key": (resigned_untrusted, None),
    "signature-not-json": (signature_record(lambda r: b"\x00not json"), None),
    "signature-wrong-algorithm": (signature_record(lambda r: json.dumps(dict(r, algorithm="rsa")).encode()), None),
    "signature-extra-field": (signature_record(lambda r: json.dumps(dict(r, trusted=True)).encode()), None),
    "signature-short-key": (signature_record(lambda r: json.dumps(dict(r, public_key="AAAA")).encode()), None),
    "signature-bad-base64": (signature_record(lambda r: json.dumps(dict(r, signature="!!!")).encode()), None),
    "library-replaced-signature-kept": (entries_edit(lambda e: [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == LIBRARY else d) for n, d in e]),
                                        "sha256 of member model.so does not match"),
    "params-replaced-signature-kept": (entries_edit(lambda e: [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == PARAMS else d) for n, d in e]),
                                       "sha256 of member params.npz does not match"),
    # the manifest (hashes consistent, signature gone)
    "out-channels-1600": (at(("conv_layers", 0, "out_channels"), 1600), "out_channels 1600 but weight '0.weight' has shape"),
    "out-channels-and-shapes-1600": (manifest_edit(lambda m: (set_path(m, ("conv_layers", 0, "out_channels"), 1600),
                                                              set_path(m, ("params", 0, "shape", 0), 1600),
                                                              set_path(m, ("params", 1, "shape"), [1600]))),
                                     "0.weight has shape \\[32, 1, 3, 3\\], the manifest says \\[1600"),
    "num-classes-x100": (at(("num_classes",), 1000), "logits of shape \\(8, 10\\), the manifest says \\(8, 1000\\)"),
    "num-classes-1": (at(("num_classes",), 1), "logits of shape"),
    "num-classes-huge": (at(("num_classes",), 2**40), "num_classes: 1099511627776 outside"),
    "k-zero": (at(("conv_layers", 0, "k"), 0), "k: 0 outside"),
    "k-negative": (at(("conv_layers", 0, "k"), -3), "k: -3 outside"),
    "k-float": (at(("conv_layers", 0, "k"), 10.0), "k: must be an integer, got float"),
    "k-bool": (at(("conv_layers", 0, "k"), True), "k: must be an integer, got bool"),
    "k-string": (at(("conv_layers", 0, "k"), "10"), "k: must be an integer, got str"),
    "k-above-out-channels": (at(("conv_layers", 0, "k"), 33), "k=33 exceeds out_channels 32"),
    "k-smaller-than-compiled": (at(("conv_layers", 0, "k"), 9), "gradients_skel does not take skeleton of 0.weight"),
    "k-larger-than-compiled": (at(("conv_layers", 1, "k"), 30), "does not take skeleton of 2.weight"),
    "k-last-layer-changed": (at(("conv_layers", 2, "k"), 19), "takes skeleton of 5.weight as \\(\\(20,\\), 'int64'\\)"),
    "batch-consistent-but-not-compiled": (manifest_edit(lambda m: (set_path(m, ("batch_size",), 4), set_path(m, ("input_shape", 0), 4))),
                                          "does not take input"),
    "batch-size-disagrees": (at(("batch_size",), 4), "batch 8 differs from batch_size 4"),
    "input-rank-changed": (at(("input_shape",), [8, 1, 8]), "does not take input"),
    "input-shape-empty": (at(("input_shape",), []), "input_shape: has 0 items"),
    "input-huge": (at(("input_shape",), [8, 65536, 65536, 8]), "more than 2147483647 elements"),
    "dtype-float64": (at(("dtype",), "float64"), "dtype float32 differs from the model's float64"),
    "dtype-float64-everywhere": (manifest_edit(lambda m: [t.update(dtype="float64") for t in m["params"] + m["states"]] and None
                                               or m.update(dtype="float64")), "0.weight is float32, the manifest says float64"),
    "dtype-int8": (at(("dtype",), "int8"), "dtype: must be one of"),
    "param-renamed": (at(("params", 0, "name"), "evil"), "weight '0.weight' is not a parameter"),
    "param-renamed-everywhere": (manifest_edit(lambda m: (set_path(m, ("params", 0, "name"), "w"), set_path(m, ("conv_layers", 0, "weight"), "w"))),
                                 "unexpected entry '0.weight.npy'"),
    "param-dropped": (manifest_edit(lambda m: m["params"].pop()), "unexpected entry '9.bias.npy'"),
    "param-duplicated": (manifest_edit(lambda m: m["params"].append(dict(m["params"][0]))), "'0.weight' appears twice"),
    "state-added": (manifest_edit(lambda m: m["states"].append({"name": "bn", "shape": [3], "dtype": "float32"})), "lacks \\['bn'\\]"),
    "params-empty": (at(("params",), []), "params: has 0 items"),
    "params-ten-thousand": (manifest_edit(lambda m: m["params"].extend([{"name": f"p{i}", "shape": [1], "dtype": "float32"} for i in range(10000)])),
                            "has 10008 items"),
    "shape-negative": (at(("params", 0, "shape", 0), -1), "shape\\[0\\]: -1 outside"),
    "shape-zero": (at(("params", 0, "shape", 0), 0), "shape\\[0\\]: 0 outside"),
    "shape-beyond-int32": (at(("params", 0, "shape", 0), 2**31), "outside \\[1, 2147483647\\]"),
    "shape-too-many-elements": (at(("params", 2, "shape"), [65536, 65536, 3, 3]), "more than 2147483647 elements"),
    "shape-rank-9": (at(("params", 0, "shape"), [1] * 9), "has 9 items"),
    "shape-not-a-list": (at(("params", 0, "shape"), "32,1,3,3"), "shape: must be a list"),
    "name-too-long": (at(("params", 0, "name"), "w" * 300), "length 300 outside"),
    "name-empty": (at(("params", 0, "name"), ""), "length 0 outside"),
    "name-not-a-string": (at(("params", 0, "name"), 5), "name: must be a string"),
    "conv-bias-wrong-shape": (at(("conv_layers", 0, "bias"), "9.bias"), "bias '9.bias' has shape \\[10\\], expected \\[32\\]"),
    "conv-weight-shared": (at(("conv_layers", 1, "weight"), "0.weight"), "belongs to two CONV layers"),
    "conv-layer-dropped": (manifest_edit(lambda m: m["conv_layers"].pop()), "gradients_skel takes 13 arguments, the manifest implies 12"),
    "conv-layer-repeated": (manifest_edit(lambda m: m["conv_layers"].append(dict(m["conv_layers"][0]))), "belongs to two CONV layers"),
    "conv-layer-extra-key": (at(("conv_layers", 0, "stride"), 2), "unknown keys \\['stride'\\]"),
    "functions-reordered": (manifest_edit(lambda m: m["functions"]["train_step"].reverse()), "functions: must be"),
    "functions-missing": (manifest_edit(lambda m: m["functions"].pop("predict")), "functions: must be"),
    "optimizer-lr-nan": (raw_manifest(lambda t: t.replace(b'"lr": 0.01', b'"lr": NaN')), "NaN is not a JSON number"),
    "optimizer-lr-infinite": (raw_manifest(lambda t: t.replace(b'"lr": 0.01', b'"lr": 1e999')), "lr: must be a finite number"),
    "optimizer-lr-negative": (at(("optimizer", "lr"), -0.1), "lr: -0.1 outside"),
    "optimizer-lr-string": (at(("optimizer", "lr"), "0.1"), "lr: must be a finite number, got str"),
    "optimizer-momentum-huge": (at(("optimizer", "momentum"), 1e300), "momentum: 1e\\+300 outside"),
    "optimizer-extra-key": (at(("optimizer", "nesterov"), True), "unknown keys \\['nesterov'\\]"),
    "ratio-zero": (at(("ratio",), 0), "ratio: 0 outside \\(0, 1\\]"),
    "ratio-two": (at(("ratio",), 2), "ratio: 2 outside"),
    "target-foreign-machine": (at(("target", "machine"), "riscv64"), "built for target host \\(riscv64\\)"),
    "target-device-cuda": (at(("target", "device"), "cuda"), "built for a cuda device, and none is available here"),
    "target-device-unknown": (at(("target", "device"), "tpu"), "device: must be one of"),
    "target-deeply-nested": (at(("target", "tvm_target"), deep(50)), "nested deeper than 8"),
    "target-long-string": (at(("target", "tvm_target", "mcpu"), "x" * 5000), "string of 5000 characters"),
    "tvm-version-other": (at(("tvm_version",), "0.19.0"), "compiled with TVM 0.19.0"),
    "format-version-99": (at(("format_version",), 99), "format version 99"),
    "format-version-string": (at(("format_version",), "1"), "format version '1'"),
    "format-version-float": (at(("format_version",), 1.0), "format version 1.0"),
    "format-version-true": (at(("format_version",), True), "format version True"),
    "sha256-short": (at(("sha256", LIBRARY), "abc"), "sha256.model.so: 'abc' does not match"),
    "sha256-uppercase": (manifest_edit(lambda m: m["sha256"].update({PARAMS: m["sha256"][PARAMS].upper()})), "does not match \\[0-9a-f\\]"),
    "sha256-extra-member": (at(("sha256", "run.sh"), "0" * 64), "unknown keys \\['run.sh'\\]"),
    "sha256-not-an-object": (at(("sha256",), []), "sha256: must be an object"),
    "tuning-wrong-type": (at(("tuning",), "yes"), "tuning: must be an object"),
    **{f"key-removed-{key}": ((lambda key: manifest_edit(lambda m: m.pop(key)))(key),
                              "format version None" if key == "format_version" else f"missing keys \\['{key}'\\]")
       for key in TOP_LEVEL_KEYS},
    "unknown-top-level-key": (at(("run",), "rm -rf /"), "unknown keys \\['run'\\]"),
    "duplicate-json-key": (raw_manifest(lambda t: t.replace(b'"model": "digits-cnn"', b'"model": "digits-cnn", "model": "x"')),
                           "key 'model' appears twice"),
    "deep-nesting": (raw_manifest(lambda t: b"[" * 100000 + b"]" * 100000), "nested too deeply|not valid JSON"),
    "manifest-a-list": (raw_manifest(lambda t: b"[]"), "must be a JSON object, got list"),
    "manifest-not-utf8": (raw_manifest(lambda t: b"\xff\xfe{}"), "not valid JSON"),
    "manifest-empty": (raw_manifest(lambda t: b""), "not valid JSON"),
    "manifest-nul": (raw_manifest(lambda t: b"{\x00}"), "not valid JSON"),
    # params.npz (hash updated)
    "params-x1000": (params_edit(lambda a: a.update({n: v * 1000 for n, v in a.items()})), None),
    "params-nan": (params_edit(lambda a: a["0.weight"].__setitem__((0, 0, 0, 0), np.nan)), "0.weight holds NaN or Inf"),
    "params-inf": (params_edit(lambda a: a["9.bias"].__setitem__(0, -np.inf)), "9.bias holds NaN or Inf"),
    "params-wrong-shape": (params_edit(lambda a: a.update({"0.weight": a["0.weight"].reshape(32, 9)})), "0.weight has shape \\[32, 9\\]"),
    "params-float64": (params_edit(lambda a: a.update({"0.bias": a["0.bias"].astype(np.float64)})), "0.bias is float64"),
    "params-big-endian": (params_edit(lambda a: a.update({"0.bias": a["0.bias"].astype(">f4")})), "0.bias is >f4"),
    "params-missing-entry": (params_edit(lambda a: a.pop("9.bias")), "lacks \\['9.bias'\\]"),
    "params-extra-entry": (params_edit(lambda a: a.update(extra=np.zeros(3, np.float32))), "unexpected entry 'extra.npy'"),
    "params-pickled-object": (member_edit(PARAMS, lambda d, ctx: zip_with(
        [(n, npy(np.array([{"x": 1}], dtype=object)) if n == "0.bias.npy" else b) for n, b in npz_entries(d)])),
        "0.bias is not a readable .npy array \\(ValueError: Object arrays cannot be loaded"),
    "params-duplicate-entry": (member_edit(PARAMS, lambda d, ctx: zip_with(npz_entries(d) + npz_entries(d)[:1])), "appears twice"),
    "params-compressed": (member_edit(PARAMS, lambda d, ctx: zip_with(npz_entries(d), zipfile.ZIP_DEFLATED)), "is compressed"),
    "params-oversized-entry": (member_edit(PARAMS, lambda d, ctx: zip_with(
        [(n, npy(np.zeros(10**6, np.float32)) if n == "0.bias.npy" else b) for n, b in npz_entries(d)])), "its shape needs at most"),
    "params-not-a-zip": (member_edit(PARAMS, lambda d, ctx: b"PK\x03\x04 not really"), "not a readable npz file"),
    "params-truncated": (member_edit(PARAMS, lambda d, ctx: d[: len(d) // 2]), "not a readable npz file"),
    "params-bad-crc": (member_edit(PARAMS, lambda d, ctx: d[:200] + bytes([d[200] ^ 0xFF]) + d[201:]), "not a readable npz file"),
    "params-npy-header-garbage": (member_edit(PARAMS, lambda d, ctx: zip_with(
        [(n, b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4', 'shape': ((((((((((" + b[26:] if n == "0.bias.npy" else b) for n, b in npz_entries(d)])),
        "0.bias is not a readable .npy array"),
    # model.so (hash updated)
    **{f"library-truncated-{f}": (truncate_library(f), "truncated or corrupt|not a 64-bit")
       for f in (0.01, 0.5, 0.9, 0.999)},
    "library-random-bytes": (member_edit(LIBRARY, lambda d, ctx: np.random.default_rng(1).bytes(len(d))), "not a 64-bit little-endian ELF"),
    "library-empty": (member_edit(LIBRARY, lambda d, ctx: b""), "not a 64-bit little-endian ELF"),
    "library-32-bit": (elf_patch(4, "<B", 1), "not a 64-bit little-endian ELF"),
    "library-big-endian": (elf_patch(5, "<B", 2), "not a 64-bit little-endian ELF"),
    "library-executable-type": (elf_patch(16, "<H", 2), "not a shared object"),
    "library-for-aarch64": (elf_patch(18, "<H", 183), "ELF machine 183"),
    "library-section-headers-beyond-end": (elf_patch(40, "<Q", 2**40), "its section headers"),
    "library-program-headers-too-many": (elf_patch(56, "<H", 65535), "its program headers"),
    "library-segment-beyond-end": (member_edit(LIBRARY, lambda d, ctx: (lambda b, o: (struct.pack_into("<Q", b, o, 2**33), bytes(b))[1])(
        bytearray(d), first_load_segment_filesz_offset(d))), "segment"),
    "library-of-another-ratio": (member_edit(LIBRARY, lambda d, ctx: ctx.other_library), "does not take skeleton of 0.weight"),
    "library-runs-a-constructor": (constructor_library, SIGNATURE_ONLY),
    "library-middle-zeroed": (member_edit(LIBRARY, lambda d, ctx: d[: len(d) // 3] + bytes(len(d) // 3) + d[2 * (len(d) // 3):]), SIGNATURE_ONLY),
}


# ---- running them ----------------------------------------------------------------------------
class Context:
    def __init__(self, good, other_library, evil_library, stranger):
        self.good, self.other_library, self.evil_library, self.stranger = good, other_library, evil_library, stranger


def build_evil_library(directory, marker):
    source = directory / "evil.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) {'
                      f' FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }} }}\n')
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build the constructor library")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", directory / "evil.so", source], check=True)
    return (directory / "evil.so").read_bytes()


def run_loads(jobs, workdir):
    """{job id: outcome} from worker subprocesses; a worker that dies is restarted after its current case."""
    results, pending, tmp = {}, list(jobs), workdir / "worker-tmp"
    tmp.mkdir()
    while pending:
        jobs_file = workdir / "jobs.json"
        jobs_file.write_text(json.dumps(pending))
        env = dict(os.environ, TMPDIR=str(tmp))
        process = subprocess.run([sys.executable, WORKER, jobs_file], capture_output=True, text=True, env=env, timeout=600)
        started = None
        for line in process.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["id"]] = record
        if process.returncode != 0:
            assert started is not None and started not in results, process.stderr[-2000:]
            results[started] = {"outcome": "crashed", "returncode": process.returncode, "stderr": process.stderr[-500:]}
        pending = [job for job in pending if job["id"] not in results]
    return results, sorted(os.listdir(tmp))


@pytest.fixture(scope="module")
def tamper_run(artifact, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tamper")
    marker = workdir / "constructor-ran"
    good = members_of(artifact("digits-cnn", ratio=0.3, batch_size=8))
    other_library = dict(members_of(artifact("digits-cnn", ratio=0.5, batch_size=8)))[LIBRARY]
    context = Context(good, other_library, build_evil_library(workdir, marker), generate_key(workdir / "stranger.pem"))
    jobs = []
    for case, (build, reason) in CASES.items():
        path = workdir / f"{case}.fsk"
        path.write_bytes(build(context))
        jobs.append({"id": f"{case}/signed", "path": str(path), "options": {}})
        if reason != SIGNATURE_ONLY:
            jobs.append({"id": f"{case}/unsigned-allowed", "path": str(path), "options": {"allow_unsigned": True}})
    results, leftovers = run_loads(jobs, workdir)
    return results, leftovers, marker


def test_there_are_at_least_99_cases():
    assert len(CASES) >= 99, len(CASES)


def test_no_tampered_artifact_loads_or_crashes_where_a_signature_is_required(tamper_run):
    results, leftovers, marker = tamper_run
    wrong = {job: r for job, r in results.items() if job.endswith("/signed") and r["outcome"] != "refused"}
    assert not wrong, wrong
    assert not marker.exists(), "a replaced model.so ran its constructor before the signature was checked"
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def test_without_a_signature_the_loader_still_refuses_each_case_for_its_reason(tamper_run):
    results, _, _ = tamper_run
    wrong = {}
    for case, (_, reason) in CASES.items():
        if reason == SIGNATURE_ONLY:
            continue
        outcome = results[f"{case}/unsigned-allowed"]
        if reason is None:  # valid content: loads, and says it was not trusted
            ok = outcome["outcome"] == "loaded" and any("without a trusted signature" in w for w in outcome["warnings"])
        else:
            ok = outcome["outcome"] == "refused" and re.search(reason, outcome["message"]) is not None
        if not ok:
            wrong[case] = outcome.get("type", outcome["outcome"]) + ": " + outcome.get("message", "")
    assert not wrong, json.dumps(wrong, indent=1)


def test_each_signed_refusal_names_the_signature_problem(tamper_run):
    results, _, _ = tamper_run
    expected = {
        "unsigned": "the artifact is not signed",
        "signature-bit-flipped": "signature does not match the manifest",
        "manifest-edited-signature-kept": "signature does not match the manifest",
        "resigned-by-untrusted-key": "which is not trusted here",
        "signature-not-json": "signature member is malformed",
        "signature-wrong-algorithm": "algorithm 'rsa'",
        "signature-extra-field": "signature member is malformed",
        "signature-short-key": "signature member is malformed",
        "signature-bad-base64": "signature member is malformed",
        "out-channels-1600": "the artifact is not signed",
        "library-runs-a-constructor": "the artifact is not signed",
    }
    for case, needle in expected.items():
        message = results[f"{case}/signed"]["message"]
        assert needle in message and "allow_unsigned=True" in message, (case, message)


# ---- trust: which keys, from where ------------------------------------------------------------------
@pytest.fixture(scope="module")
def signed_path(artifact):
    return artifact("digits-cnn", ratio=0.3, batch_size=8)


def test_explicit_trusted_keys_replace_the_machine_default(signed_path, tmp_path):
    stranger = generate_key(tmp_path / "other.pem")
    with pytest.raises(ArtifactError, match="not trusted here"):
        load(signed_path, trusted_keys=[tmp_path / "other.pem.pub"])
    own = default_signing_key().public_key()
    assert load(signed_path, trusted_keys=[public_key_line(own)]).signer == load(signed_path).signer
    assert load(signed_path, trusted_keys=[stranger.public_key(), own]).signer is not None


def test_pinned_keys_from_the_environment(signed_path, tmp_path, monkeypatch):
    generate_key(tmp_path / "other.pem")
    monkeypatch.setenv("FEDSKEL_TRUSTED_KEYS", str(tmp_path / "other.pem.pub"))
    with pytest.raises(ArtifactError, match="not trusted here"):
        load(signed_path)
    pins = tmp_path / "pins"
    pins.mkdir()
    (pins / "ours.pub").write_text(public_key_line(default_signing_key().public_key()))
    monkeypatch.setenv("FEDSKEL_TRUSTED_KEYS", f"{tmp_path / 'other.pem.pub'}{os.pathsep}{pins}")
    assert load(signed_path).signer is not None
    monkeypatch.setenv("FEDSKEL_TRUSTED_KEYS", str(tmp_path / "missing.pub"))
    with pytest.raises(ArtifactError, match="cannot read key file"):
        load(signed_path)


def test_a_device_without_the_key_refuses_and_allow_unsigned_warns(signed_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSKEL_HOME", str(tmp_path / "device"))  # a fresh device: trusts nothing
    with pytest.raises(ArtifactError, match="not trusted here \\(0 trusted"):
        load(signed_path)
    with pytest.warns(UserWarning, match="without a trusted signature"):
        assert load(signed_path, allow_unsigned=True).signer is None
    assert not (tmp_path / "device").exists(), "loading must never create keys"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "a.fsk"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactError, match="not a regular file"):
        load(fifo)
