"""Build a training module into a shared library for a target."""

import os
import tempfile

import tvm

from fedskel.targets import TargetError, choose_linker

from .errors import CompileError, tvm_reason


def resolve_linker(target_spec, cc=None):
    """The linker for ``target_spec`` (``cc``: a named one), chosen before the compile so a bad one fails fast."""
    try:
        return choose_linker(target_spec, cc)
    except TargetError as exc:
        raise CompileError(str(exc)) from None


def compile_executable(module, target_spec):
    """Compile every function of ``module`` for ``target_spec`` with its Relax pipeline: a VM executable."""
    try:
        target = target_spec.tvm()
    except TargetError as exc:
        raise CompileError(str(exc)) from None
    try:
        return tvm.compile(module, target=target, relax_pipeline=target_spec.relax_pipeline(target))
    except (RuntimeError, ValueError) as exc:  # TVM 0.27 raises Python built-ins (there is no tvm.TVMError)
        raise CompileError(f"TVM failed to build for target {target_spec.name}: {tvm_reason(exc) or 'an internal error'}") from None


def build_library(module, target_spec, linker):
    """``module`` compiled for ``target_spec`` and linked by ``linker`` (targets/linker.py): the library's bytes."""
    executable = compile_executable(module, target_spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.so")
        try:
            executable.export_library(path, fcompile=linker)
        except RuntimeError as exc:
            raise CompileError(str(exc)) from None
        with open(path, "rb") as handle:
            return handle.read()
