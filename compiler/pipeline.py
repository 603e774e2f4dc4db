"""Model in, artifact out: the one function behind ``fedskel-compile``."""

import dataclasses
import math
import os
import tempfile

import numpy as np
import tvm

from fedskel.runtime.artifact import LIBRARY, PARAMS, ArtifactError, pack_arrays, write_artifact
from fedskel.runtime.signing import default_signing_key, load_signing_key
from fedskel.targets import get_target

from .batch_norm_stats import CONVENTION as BN_RUNNING_VAR
from .build import build_library, resolve_linker
from .errors import CompileError
from .kernels import UseConvKernels
from .onnx_loader import load_onnx
from .training_graph import build_training_module
from .tuning import apply_database
from .torchvision_zoo import PREFIX as TORCHVISION_PREFIX
from .torchvision_zoo import export_torchvision_onnx
from .zoo import ZOO, export_zoo_onnx

DEFAULT_OPTIMIZER = {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.0}


TORCHVISION_DEFAULTS = {"num_classes": 1000, "input_shape": (3, 224, 224)}  # torchvision's own


def resolve_model(model, batch_size, workdir, seed=0, num_classes=None, input_shape=None):
    """A zoo or ``torchvision:`` name is exported to ONNX in ``workdir``; anything else is an ONNX path."""
    if model.startswith(TORCHVISION_PREFIX):
        name = model[len(TORCHVISION_PREFIX):]
        path = os.path.join(workdir, f"{name}.onnx")
        export_torchvision_onnx(name, num_classes or TORCHVISION_DEFAULTS["num_classes"],
                                input_shape or TORCHVISION_DEFAULTS["input_shape"], batch_size or 32, path, seed)
        return path, name, batch_size or 32
    if input_shape is not None:
        raise CompileError("--input-shape applies to torchvision: models only (a zoo model or ONNX file fixes its own)")
    if model in ZOO:
        path = os.path.join(workdir, f"{model}.onnx")
        export_zoo_onnx(model, batch_size or 32, path, seed=seed)
        return path, model, batch_size or 32
    if not os.path.exists(model):
        raise CompileError(f"{model}: no such file, and not a zoo model (zoo: {', '.join(ZOO)})")
    return model, None, batch_size


def resolve_target(name, opt_level=None):
    """The TargetSpec for ``name`` (with LLVM at ``opt_level`` when given); an unknown target or a bad level
    is a CompileError like any other bad option."""
    try:
        spec = get_target(name)
        return spec if opt_level is None else spec.with_llvm_opt_level(opt_level)
    except KeyError as exc:  # TargetError is a KeyError
        raise CompileError(str(exc.args[0])) from None


def load_training_module(model, ratio=0.1, batch_size=None, num_classes=None, seed=0, input_shape=None, target=None,
                         conv_kernels=True):
    """(imported model, training module): what fedskel-compile builds and fedskel-tune tunes, made the same way.

    With a ``target`` (a TargetSpec or name) CPU CONVs get the hand-scheduled kernels for its ISA
    (compiler/kernels), unless ``conv_kernels`` is False (TVM's own lowering, to compare against)."""
    if not 0.0 < ratio <= 1.0:
        raise CompileError(f"skeleton ratio must be in (0, 1], got {ratio}")
    if batch_size is not None and batch_size < 1:
        raise CompileError(f"batch size must be >= 1, got {batch_size}")
    with tempfile.TemporaryDirectory() as workdir:
        path, zoo_name, batch_size = resolve_model(model, batch_size, workdir, seed, num_classes, input_shape)
        imported = load_onnx(path, batch_size=batch_size, num_classes=num_classes, name=zoo_name)
        training = build_training_module(imported, ratio)
    if target is not None:
        training = with_target_kernels(training, resolve_target(target) if isinstance(target, str) else target, conv_kernels)
    return imported, training


def with_target_kernels(training, target_spec, conv_kernels=True):
    """``training`` with the hand-scheduled CONV kernels of a CPU ``target_spec``; GPU targets keep dlight's rules."""
    if target_spec.device != "cpu" or not conv_kernels:
        return training
    return dataclasses.replace(training, module=UseConvKernels(target_spec.tvm_target)(training.module))


def compile_model(model, output, target="host", ratio=0.1, batch_size=None, num_classes=None, optimizer=None, seed=0,
                  tuning_db=None, sign_key=None, cc=None, input_shape=None, conv_kernels=True, opt_level=None):
    """Compile ``model`` (zoo name, ``torchvision:NAME`` or ONNX path) into the artifact ``output``; returns the
    manifest.

    ``tuning_db``: a fedskel-tune database directory whose best schedules the kernels get.
    ``sign_key``: PEM file of the Ed25519 key that signs the artifact (default: this user's key,
    made and trusted on this machine on first use; runtime/signing.py).
    ``cc``: the command that links the library, or "zig" (default: targets/linker.py's choice).
    ``input_shape``: (C, H, W) of a torchvision model.
    ``conv_kernels``: False builds CONVs with TVM's own lowering instead of the hand-scheduled kernels.
    ``opt_level``: LLVM's optimisation level, 0-3 (default TVM's 3; 0 builds several times faster, runs slower).
    Everything that can be checked before compiling is (output path, optimizer, key).
    """
    check_output_path(output)
    target_spec = resolve_target(target, opt_level)
    optimizer = checked_optimizer({**DEFAULT_OPTIMIZER, **(optimizer or {})})
    signing_key = _signing_key(sign_key)
    linker = resolve_linker(target_spec, cc)
    imported, training = load_training_module(model, ratio, batch_size, num_classes, seed, input_shape, target_spec,
                                              conv_kernels)
    module, tuning = apply_database(training.module, target_spec, tuning_db) if tuning_db else (training.module, None)
    library = build_library(module, target_spec, linker)
    manifest = {
        "model": imported.name,
        "input_shape": list(imported.input_shape),
        "dtype": imported.dtype,
        "batch_size": imported.input_shape[0],
        "num_classes": imported.num_classes,
        "params": [_describe(n, imported.initial_values[n]) for n in imported.param_names],
        "states": [_describe(n, imported.initial_values[n]) for n in imported.state_names],
        "batch_norm_running_var": BN_RUNNING_VAR,
        "conv_layers": training.conv_layers,
        "ratio": ratio,
        "optimizer": optimizer,
        "functions": training.function_args,  # how the runtime calls them (runtime/manifest.calling_convention)
        "target": {
            "name": target_spec.name,
            "tvm_target": target_spec.tvm_target,
            "machine": target_spec.machine,
            "device": target_spec.device,
        },
        "linker": linker.describe(),
        "tvm_version": tvm.__version__,
        "tuning": tuning,
        "conv_kernels": "nhwc-hand-scheduled" if conv_kernels and target_spec.device == "cpu" else "tvm-default",
    }
    members = {LIBRARY: library, PARAMS: pack_arrays(imported.initial_values)}
    return write_artifact(output, manifest, members, signing_key=signing_key)


def check_output_path(output):
    """CompileError unless ``output`` names a file that can be written: its directory exists, it is not a directory."""
    output = os.fspath(output)
    directory = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise CompileError(f"output {output} is a directory; give the artifact's file name (e.g. {os.path.join(output, 'model.fsk')})")
    if not os.path.isdir(directory):
        raise CompileError(f"output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise CompileError(f"output directory {directory} is not writable")


def checked_optimizer(optimizer):
    """The SGD defaults, refused unless each is a finite number >= 0 (the runtime's own rule)."""
    for key, value in optimizer.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise CompileError(f"--{key.replace('_', '-')} must be a finite number >= 0, got {value!r}")
    return optimizer


def _signing_key(path):
    try:
        return default_signing_key() if path is None else load_signing_key(path)
    except ArtifactError as exc:
        raise CompileError(f"signing key: {exc}") from None


def _describe(name, array):
    return {"name": name, "shape": list(array.shape), "dtype": str(np.dtype(array.dtype))}
