"""The compiled library: checked as an ELF file before it is opened, then checked against the manifest.

Before ``dlopen``: a 64-bit little-endian shared object for this machine whose every segment and section
lies inside the file (a truncated library is a SIGBUS inside the loader, not an exception). After: every
function the runtime calls exists with the arity the manifest implies, and the compiled argument shapes
and dtypes are the manifest's. The Relax VM checks every argument of the training functions at entry, in
order, before it computes anything, so a call whose last argument alone is wrong proves all earlier ones
match and names the last one's compiled type (``predict`` checks only its input at entry: its parameters
are the ones ``forward_train`` was shown to take, and every kernel checks its buffers' shapes). One
forward pass then shows the number of classes. So no manifest value that bounds an index (out_channels
and k for skeletons, num_classes for labels) reaches a kernel unless the library agrees with it, or a
trusted key signed the manifest (the forward pass, the one check that computes, is then skipped).

A library is native code: these checks catch a corrupt or inconsistent artifact; only a signature
(runtime/signing.py) says the code is the one its signer compiled.
"""

import os
import platform
import re
import struct
import tempfile

import numpy as np
import tvm
from tvm.runtime import vm as tvm_vm

from .errors import ArtifactError
from .manifest import DROPOUT_SEED, LIBRARY

_ELF_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}
_ET_DYN, _SHT_NOBITS = 3, 8
_ANNOTATION = re.compile(r'annotation=R\.Tensor\(\(([0-9, ]*)\),\s*dtype="(\w+)"\)')


def check_elf(data, machine=None):
    """Refuse anything but a complete 64-bit little-endian shared object for ``machine`` (default: this one)."""
    machine = (machine or platform.machine()).lower()
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ArtifactError("model.so is not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    if e_type != _ET_DYN:
        raise ArtifactError(f"model.so is an ELF file of type {e_type}, not a shared object")
    if e_machine != _ELF_MACHINES.get(machine):
        raise ArtifactError(f"model.so is for ELF machine {e_machine}, this machine ({machine}) needs {_ELF_MACHINES.get(machine)}")
    if phentsize != 56 or (shnum and shentsize != 64):
        raise ArtifactError("model.so has malformed ELF header table sizes")
    _inside(data, phoff, phnum * 56, "its program headers")
    _inside(data, shoff, shnum * 64, "its section headers")
    for i in range(phnum):
        offset, filesz = struct.unpack_from("<Q", data, phoff + 56 * i + 8)[0], struct.unpack_from("<Q", data, phoff + 56 * i + 32)[0]
        _inside(data, offset, filesz, f"segment {i}")
    for i in range(shnum):
        sh_type = struct.unpack_from("<I", data, shoff + 64 * i + 4)[0]
        offset, size = struct.unpack_from("<QQ", data, shoff + 64 * i + 24)
        if sh_type != _SHT_NOBITS:
            _inside(data, offset, size, f"section {i}")


def _inside(data, offset, size, what):
    if offset + size > len(data):
        raise ArtifactError(f"model.so is truncated or corrupt: {what} ends at byte {offset + size} of {len(data)}")


def open_library(data):
    """The TVM module in ``data``. TVM loads from files: a private temporary copy, removed on every path."""
    check_elf(data)
    with tempfile.TemporaryDirectory(prefix="fedskel-") as tmp:
        path = os.path.join(tmp, LIBRARY)
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return tvm.runtime.load_module(path)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ArtifactError(f"TVM cannot load model.so: {str(exc).strip().splitlines()[-1][:300]}") from None


def argument_types(manifest):
    """{function: [(what, shape, dtype)]}: what the runtime passes to each compiled function, from the manifest."""
    dtype = manifest["dtype"]
    kinds = {
        "input": [("input", tuple(manifest["input_shape"]), dtype)],
        "labels": [("labels", (manifest["batch_size"],), "int64")],
        "lr": [("lr", (), dtype)], "momentum": [("momentum", (), dtype)], "weight_decay": [("weight_decay", (), dtype)],
        "params": [(p["name"], tuple(p["shape"]), dtype) for p in manifest["params"]],
        "states": [(s["name"], tuple(s["shape"]), dtype) for s in manifest["states"]],
        "velocities": [(f"velocity of {p['name']}", tuple(p["shape"]), dtype) for p in manifest["params"]],
        "skeleton": [(f"skeleton of {c['weight']}", (c["k"],), "int64") for c in manifest["conv_layers"]],
        DROPOUT_SEED: [("dropout seed", (), "int64")],
    }
    return {function: [arg for kind in order for arg in kinds[kind]] for function, order in manifest["functions"].items()}


def check_library(vm, manifest, device, run_forward=True):
    """ArtifactError unless every function's arity, argument shapes and dtypes, and the classes, are the manifest's.

    ``run_forward``: also run one forward pass to see the number of classes (the only check that computes;
    a big untuned model takes seconds). A manifest signed by a trusted key was written by the compiler
    from this very module, so its loader may skip it.
    """
    for function, arguments in argument_types(manifest).items():
        try:
            arity = vm._get_function_arity(function)
        except (RuntimeError, AttributeError):
            raise ArtifactError(f"the library has no function {function!r}") from None
        if arity != len(arguments):
            raise ArtifactError(f"the library's {function} takes {arity} arguments, the manifest implies {len(arguments)}")
        if function != "predict":
            _probe(vm, function, arguments, device)
    if not run_forward:
        return
    try:
        logits = _call_predict(vm, manifest, device)
    except Exception as exc:  # noqa: BLE001  any TVM error: the library does not run as described
        raise ArtifactError(f"the library's predict fails on the manifest's arguments: {_last_line(str(exc))}") from None
    expected = (manifest["batch_size"], manifest["num_classes"])
    if logits.shape != expected:
        raise ArtifactError(f"the library's predict returns logits of shape {logits.shape}, the manifest says {expected}")


def _probe(vm, function, arguments, device):
    """Call with the manifest's arguments but an empty last one: the VM must reject exactly that one."""
    *first, (what, shape, dtype) = arguments
    if not shape:  # a 0-d last argument cannot be given a wrong shape of the same rank: arity was checked
        return
    args = [_zeros(s, d, device) for _, s, d in first] + [_zeros((0,) * len(shape), dtype, device)]
    try:
        vm[function](*args)
    except Exception as exc:  # TVM's error types vary by check; the message says which argument failed
        message = str(exc)
    else:
        raise ArtifactError(f"the library's {function} accepted an empty {what}: it is not a FedSkel training module")
    failed = re.search(r"loc=param\[(\d+)\]", message)
    if failed is None or int(failed.group(1)) != len(arguments) - 1:
        index = int(failed.group(1)) if failed else None
        name = arguments[index][0] if index is not None and index < len(arguments) else "an argument"
        raise ArtifactError(f"the library's {function} does not take {name} as the manifest describes it: {_last_line(message)}")
    annotation = _ANNOTATION.search(message)
    compiled = (tuple(int(d) for d in annotation.group(1).replace(" ", "").split(",") if d), annotation.group(2)) if annotation else None
    if compiled != (tuple(shape), dtype):
        raise ArtifactError(f"the library's {function} takes {what} as {compiled}, the manifest says {(tuple(shape), dtype)}")


def _call_predict(vm, manifest, device):
    arguments = argument_types(manifest)["predict"]
    result = vm["predict"](*[_zeros(s, d, device) for _, s, d in arguments])
    return (result[0] if manifest["states"] else result).numpy()


def _zeros(shape, dtype, device):
    return tvm.runtime.tensor(np.zeros(shape, dtype), device)


def _last_line(message):
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no message)"


def virtual_machine(library, manifest, device, run_forward=True):
    """The Relax VM over ``library`` once it has been checked against ``manifest`` (check_library)."""
    vm = tvm_vm.VirtualMachine(library, device)
    check_library(vm, manifest, device, run_forward)
    return vm
