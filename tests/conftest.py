"""Shared fixtures: compiled artifacts are built once per session (a compile takes seconds)."""

import pytest

from fedskel.compiler.pipeline import compile_model
from fedskel.targets import TargetError, get_target


def require_toolchain(target):
    """Skip, naming what is missing, when ``target``'s cross-linker is not on this machine (scripts/setup.sh
    does not install system compilers)."""
    try:
        get_target(target).require_toolchain()
    except TargetError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """artifact(model, ratio=..., batch_size=..., **opts) -> path of a compiled artifact (cached)."""
    cache = {}
    root = tmp_path_factory.mktemp("artifacts")

    def build(model, ratio=0.3, batch_size=8, **options):
        key = (str(model), ratio, batch_size, tuple(sorted(options.items())))
        if key not in cache:
            path = root / f"a{len(cache)}.fsk"
            compile_model(str(model), path, ratio=ratio, batch_size=batch_size, **options)
            cache[key] = path
        return cache[key]

    return build


@pytest.fixture(scope="session")
def digits_artifact(artifact):
    """digits-cnn at batch 16, r = 0.3: the model the client and simulator tests train."""
    return artifact("digits-cnn", ratio=0.3, batch_size=16)
