#!/usr/bin/env bash
# Create .venv and install FedSkel with everything the tests need (idempotent; a fresh machine needs
# only Python 3.11, gcc and pip). torch is pinned to the CPU wheel: any other version pulls CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# torchvision's model builders, for `fedskel-compile torchvision:NAME` and its tests. PyPI's 0.28.0 is the
# release for torch 2.13; --no-deps keeps it from replacing the CPU torch with a CUDA one
# (compiler/torchvision_zoo.py makes it importable beside the CPU torch).
.venv/bin/python -m pip install -q --no-deps torchvision==0.28.0
