"""Target lookup: a registered name, ``cuda:sm_XX`` for another GPU architecture, or a TVM JSON target dict."""

import json
import platform
import re
from dataclasses import replace

from .spec import TargetError, TargetSpec

_REGISTRY = {}

# Where a library whose CPU code is for this architecture can run.
_ARCH_MACHINES = {"x86_64": "x86_64", "aarch64": "aarch64"}
_RUNTIME_DEVICES = {"llvm": "cpu", "cuda": "cuda"}


def register(spec):
    _REGISTRY[spec.name] = spec
    return spec


def available():
    return dict(_REGISTRY)


def get_target(name):
    """The TargetSpec for ``name``; raises TargetError listing the known names."""
    if name.lstrip().startswith("{"):
        return _from_json(name)
    base, _, option = name.partition(":")
    if base not in _REGISTRY:
        raise TargetError(
            f"unknown target {name!r}; known targets: {', '.join(sorted(_REGISTRY))} "
            "(also cuda:sm_XX, or a TVM target as a JSON dict)"
        )
    spec = _REGISTRY[base]
    if not option:
        return spec
    if spec.device != "cuda" or not re.fullmatch(r"sm_\d+", option):
        raise TargetError(f"target {name!r}: only a CUDA target takes an option, and it is an arch like sm_90")
    return replace(spec, name=name, tvm_target={**spec.tvm_target, "arch": option})


def _from_json(text):
    """A user's own TVM target: the machine (and so the linker) follows its (host) mtriple, the device its kind."""
    try:
        target = json.loads(text)
    except ValueError as exc:
        raise TargetError(f"target is not valid JSON ({exc})") from None
    if not isinstance(target, dict) or "kind" not in target:
        raise TargetError('a JSON target must be an object with a "kind", e.g. {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')
    if target["kind"] not in _RUNTIME_DEVICES:
        raise TargetError(f"target kind {target['kind']!r}: the FedSkel runtime runs llvm (cpu) and cuda targets only")
    cpu_side = target.get("host", target) if target["kind"] == "cuda" else target
    if not isinstance(cpu_side, dict):
        raise TargetError('a JSON target\'s "host" must be an object, e.g. {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}')
    arch = cpu_side.get("mtriple", platform.machine()).split("-")[0]
    if arch not in _ARCH_MACHINES:
        raise TargetError(f"target mtriple {cpu_side.get('mtriple')!r}: supported CPUs are {', '.join(_ARCH_MACHINES)}")
    machine = _ARCH_MACHINES[arch]
    return TargetSpec(
        name="custom",
        description="a TVM target given as JSON",
        tvm_target=target,
        machine=machine,
        device=_RUNTIME_DEVICES[target["kind"]],
    )
