"""The linker that turns TVM's object files into the shared library an artifact carries.

A library for another CPU needs a cross linker. A system cross gcc (``aarch64-linux-gnu-gcc``) is used when
the user names it (``--cc``) or has one on PATH; otherwise zig from the ``ziglang`` wheel, a self-contained
clang + lld with the C library stubs of every target, which pip installs with the project: a fresh machine
(a laptop without root, macOS) cross-links with no apt-get.

zig links against glibc ``ZIG_GLIBC``'s symbol versions, so the library asks a board for no newer glibc
than that. 2.27 is the floor of the runtime bundle that loads it (the aarch64 wheels of TVM and numpy are
manylinux_2_27, TVM's own runtime library asks for GLIBC_2.27): every board that can install the bundle can
load the library, and no older glibc is worth targeting. Debian bookworm and Raspberry Pi OS bookworm have
2.36, bullseye 2.31, Ubuntu 20.04 / Jetson Linux r35 2.31, Ubuntu 22.04 / Jetson Linux r36 2.35.
"""

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from tvm.support.cc import get_cc

from .spec import TargetError

ZIG_GLIBC = "2.27"
ZIG = "zig"  # the --cc name of the pip-installed zig


@dataclass(frozen=True)
class Linker:
    """A command that links objects into a shared library: ``export_library``'s ``fcompile`` (picklable,
    so MetaSchedule's builder workers can link tuning candidates with it too)."""

    name: str  # what the manifest records: "zig", or the compiler's command name
    version: str
    command: tuple  # the argv before "-shared -fPIC -o OUTPUT OBJECTS..."

    def __call__(self, output, objects, options=None):
        argv = [*self.command, "-shared", "-fPIC", "-o", output, *(options or []), *objects]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"linking {output} failed: {shlex.join(argv)}\n{result.stdout}{result.stderr}")

    def describe(self):
        """The manifest's record of what linked the library (no local paths)."""
        return {"name": self.name, "version": self.version, "flags": list(self.command[1:])}


def choose_linker(target_spec, cc=None):
    """The Linker for ``target_spec``: ``cc`` when given (a command, or "zig"), else the target's cross gcc
    on PATH, else zig for a cross target and the host's C compiler for a native one."""
    triple = target_spec.gnu_triple
    if cc == ZIG:
        return zig_linker(triple)
    if cc:
        return _compiler(cc, f"--cc {cc}")
    if target_spec.is_cross():
        gcc = f"{triple}-gcc"
        return _compiler(gcc, gcc) if shutil.which(gcc) else zig_linker(triple)
    host_cc = get_cc()
    if host_cc is None:
        raise TargetError(f"target {target_spec.name}: no C compiler to link the library (install gcc, or pass --cc {ZIG})")
    return _compiler(host_cc, host_cc)


def zig_linker(gnu_triple):
    """zig cc for ``gnu_triple`` (e.g. aarch64-linux-gnu) at glibc ZIG_GLIBC."""
    spec = importlib.util.find_spec("ziglang")
    if spec is None:
        raise TargetError("cross-linking needs the ziglang package (pip install ziglang), or a cross gcc named with --cc")
    version = importlib.metadata.version("ziglang")
    zig = os.path.join(os.path.dirname(spec.origin), "zig")
    return Linker(ZIG, version, (zig, "cc", "-target", f"{gnu_triple}.{ZIG_GLIBC}"))


def _compiler(command, shown):
    path = shutil.which(command)
    if path is None:
        raise TargetError(f"{shown}: no such command on PATH")
    result = subprocess.run([path, "-dumpversion"], capture_output=True, text=True)
    return Linker(os.path.basename(path), result.stdout.strip(), (path,))
