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
