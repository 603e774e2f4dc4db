"""Named compile targets: each a small declaration of what TVM needs to build for a kind of device.

The runtime checks ``machine`` (what ``platform.machine()`` must say) and ``device`` before loading an
artifact, so an arm64 library is refused with a message on an x86 host rather than failing in dlopen.
"""

import os
import platform
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    tvm_target: dict  # TVM 0.27 JSON target dict
    machine: str  # platform.machine() of a device that can load the library
    device: str = "cpu"  # "cpu" or "cuda": the TVM device the runtime runs on
    cross_compiler: str | None = None  # compiler used to link the shared library (None: the host's)
    tuning: dict = field(default_factory=dict)  # default MetaSchedule settings

    def tvm(self):
        import tvm

        return tvm.target.Target(self.tvm_target)


_REGISTRY = {}


def register(spec):
    _REGISTRY[spec.name] = spec
    return spec


def available():
    return dict(_REGISTRY)


def get_target(name):
    if name not in _REGISTRY:
        raise KeyError(f"unknown target {name!r}; known targets: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _host_llvm():
    """This machine's CPU, so LLVM may use every vector extension it has."""
    from tvm.target import codegen

    return {
        "kind": "llvm",
        "mcpu": codegen.llvm_get_system_cpu(),
        "num-cores": os.cpu_count() or 1,
    }


register(
    TargetSpec(
        name="host",
        description="this machine's CPU through LLVM, with all its vector extensions",
        tvm_target=_host_llvm(),
        machine=platform.machine(),
    )
)
register(
    TargetSpec(
        name="x86_64",
        description="generic 64-bit x86 Linux (portable to any x86-64 CPU)",
        tvm_target={"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
        machine="x86_64",
    )
)
