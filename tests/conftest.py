"""Shared fixtures: compiled artifacts are built once per session (a compile takes seconds)."""

import pytest

from fedskel.compiler.pipeline import compile_model


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
