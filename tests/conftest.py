"""Shared fixtures: compiled artifacts are built once per session (a compile takes seconds).

The session gets its own FEDSKEL_HOME (signing key, trusted keys) so no test reads or writes the user's;
processes the tests start inherit it, so they trust the artifacts the session compiles.
"""

import os

import pytest

from fedskel.compiler.pipeline import compile_model
from fedskel.runtime.signing import config_dir


@pytest.fixture(scope="session", autouse=True)
def fedskel_home(tmp_path_factory):
    """A private FEDSKEL_HOME for the session; $FEDSKEL_TRUSTED_KEYS unset so it is the one trust store."""
    user_home = config_dir()
    before = _listing(user_home)
    saved = {name: os.environ.pop(name, None) for name in ("FEDSKEL_HOME", "FEDSKEL_TRUSTED_KEYS")}
    home = tmp_path_factory.mktemp("fedskel-home")
    os.environ["FEDSKEL_HOME"] = str(home)
    yield home
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value
    assert _listing(user_home) == before, f"the tests wrote keys outside their temporary directory, into {user_home}"


def _listing(directory):
    return sorted(str(p) for p in directory.rglob("*")) if directory.exists() else None


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
