"""Named compile targets: each a small declaration of what TVM needs to build for a kind of device.

The runtime checks ``machine`` (what ``platform.machine()`` must say) and ``device`` before loading an
artifact, so an arm64 library is refused with a message on an x86 host rather than failing in dlopen.
"""

from . import builtin  # noqa: F401  (registers the named targets)
from .linker import Linker, choose_linker
from .registry import available, get_target, register
from .spec import TargetError, TargetSpec

__all__ = ["TargetSpec", "TargetError", "register", "available", "get_target", "Linker", "choose_linker"]
