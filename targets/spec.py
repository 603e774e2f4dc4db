"""What a compile target is, and the checks that turn "TVM can't do that here" into a message naming the fix.

TVM on its own accepts an unknown ``-mcpu`` with a logged warning and falls back to a generic CPU: that is
checked up front. What links the library is targets/linker.py's choice.
"""

import platform
from dataclasses import dataclass, field, replace


# The GNU triple of the system a library for ``machine`` links against (targets/linker.py).
GNU_TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


class TargetError(KeyError):
    """A target that is unknown, malformed, or not buildable here (a KeyError: lookups fail the usual way)."""

    def __str__(self):
        return str(self.args[0])


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    tvm_target: dict  # TVM 0.27 JSON target dict; a GPU target carries its CPU side under "host"
    machine: str  # platform.machine() of a device that can load the library
    device: str = "cpu"  # "cpu" or "cuda": the TVM device the runtime runs on
    tuning: dict = field(default_factory=dict)  # default MetaSchedule settings

    def tvm(self):
        """The tvm.target.Target, after checking this TVM build can generate code for it."""
        import tvm

        _check_codegen(self.name, self.tvm_target)
        if "host" in self.tvm_target:
            _check_codegen(self.name, self.tvm_target["host"])
        return tvm.target.Target(self.tvm_target)

    def with_llvm_opt_level(self, level):
        """This target with LLVM optimising at ``level`` (TVM's default is 3) on its CPU side.

        Why: level 0 builds 3-5x faster and runs slower, for builds that check what a graph computes rather
        than ship (the float64 torch-oracle tests of large models); the level is recorded in the target."""
        if type(level) is not int or not 0 <= level <= 3:
            raise TargetError(f"LLVM opt level must be 0, 1, 2 or 3, got {level!r}")
        if self.tvm_target.get("kind") == "llvm":
            return replace(self, tvm_target={**self.tvm_target, "opt-level": level})
        host = self.tvm_target.get("host")  # a GPU target: its kernels are not LLVM's, its host code is
        if not isinstance(host, dict) or host.get("kind") != "llvm":
            raise TargetError(f"target {self.name}: no LLVM side to set an opt level on")
        return replace(self, tvm_target={**self.tvm_target, "host": {**host, "opt-level": level}})

    def relax_pipeline(self, target):
        """The Relax pipeline for tvm.compile: on CPUs TVM's default plus parallel loops for the kernels nothing else
        schedules (cpu_pipeline.py), on CUDA the fully-scheduling one."""
        if self.device != "cuda":
            from .cpu_pipeline import cpu_pipeline

            return cpu_pipeline(target)
        from .cuda_pipeline import cuda_pipeline

        return cuda_pipeline(target)

    @property
    def gnu_triple(self):
        return GNU_TRIPLES[self.machine]

    def is_cross(self):
        """Whether the library is for another CPU than this machine's, so needs a cross linker."""
        return self.machine != platform.machine()


def _check_codegen(name, target):
    import tvm
    from tvm.target import codegen

    kind = target.get("kind")
    if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
        raise TargetError(f"target {name}: this TVM build cannot generate code for kind {kind!r} (install a TVM built with it)")
    if kind != "llvm":
        return
    triple = target.get("mtriple", codegen.llvm_get_system_triple())
    arch = triple.split("-")[0]
    if arch not in codegen.llvm_get_targets():
        raise TargetError(f"target {name}: this TVM's LLVM {codegen.llvm_version_major()} has no {arch} backend")
    cpu = target.get("mcpu")
    if cpu and not codegen.llvm_is_valid_cpu(cpu, triple):
        raise TargetError(f"target {name}: LLVM {codegen.llvm_version_major()} does not know mcpu {cpu!r} for {triple}")
