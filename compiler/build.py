"""Build a training module into a shared library for a target."""

import os
import tempfile

import tvm

from fedskel.targets import TargetError

from .errors import CompileError, tvm_reason


def compile_executable(module, target_spec):
    """Compile every function of ``module`` for ``target_spec`` with its Relax pipeline: a VM executable."""
    try:
        target = target_spec.tvm()
        target_spec.require_toolchain()
    except TargetError as exc:
        raise CompileError(str(exc)) from None
    try:
        return tvm.compile(module, target=target, relax_pipeline=target_spec.relax_pipeline(target))
    except (RuntimeError, ValueError) as exc:  # TVM 0.27 raises Python built-ins (there is no tvm.TVMError)
        raise CompileError(f"TVM failed to build for target {target_spec.name}: {tvm_reason(exc) or 'an internal error'}") from None


def build_library(module, target_spec):
    """``module`` compiled for ``target_spec`` and exported: the shared library's bytes."""
    executable = compile_executable(module, target_spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.so")
        options = {"cc": target_spec.cross_compiler} if target_spec.cross_compiler else {}
        executable.export_library(path, **options)
        with open(path, "rb") as handle:
            return handle.read()
