"""The runtime-only bundle a device needs: our runtime package and the pins of what it imports.

A board gets ``fedskel/runtime`` (numpy, the TVM runtime and cryptography for artifact signatures, nothing
else) and a requirements file pinning the TVM release that compiled the artifact, never the compiler or torch.
"""

import importlib.metadata
import os
import shutil

import fedskel.runtime

REQUIREMENTS = "requirements.txt"


def runtime_requirements():
    """numpy, the exact TVM this workstation compiles with (a library is only loadable by the same TVM), and
    the cryptography that checks artifact signatures (runtime/signing.py)."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("apache-tvm", "apache-tvm-ffi", "cryptography")]
    return ["numpy>=1.26", *pins]


def write_runtime_bundle(directory):
    """Write ``directory``/fedskel/runtime/*.py and ``directory``/requirements.txt; returns the directory."""
    source = os.path.dirname(fedskel.runtime.__file__)
    package = os.path.join(directory, "fedskel", "runtime")
    if os.path.exists(package):
        shutil.rmtree(package)
    os.makedirs(package)
    for name in sorted(os.listdir(source)):
        if name.endswith(".py"):
            shutil.copy2(os.path.join(source, name), package)
    with open(os.path.join(directory, REQUIREMENTS), "w") as handle:
        handle.write("\n".join(runtime_requirements()) + "\n")
    return directory
