"""Shared test helpers: where the read-only shared data sits, if anywhere.

Also turns on JAX's persistent compilation cache for the test session: many
tests compile the same tiny programs (the quick start's steps), and a cache
shared by the xdist workers turns the repeats into loads. The folder is new for
each session (set before the workers start, so they inherit it), so no test
sees a cache left by an earlier run; the cache changes no number, since a
loaded executable is the compiled program itself.
"""

import os
import pathlib
import tempfile

import jax

REPO = pathlib.Path(__file__).resolve().parent.parent

_CACHE_ENV = "WORMJAX_TEST_XLA_CACHE"
if not os.environ.get(_CACHE_ENV):
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="wormjax-test-xla-")
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def shared_data(*parts: str) -> str | None:
    """Path under ``shared/data`` beside the checkout (CI's layout), or None."""
    for root in (os.environ.get("WORMJAX_SHARED_DIR"), REPO.parent / "shared",
                 pathlib.Path("/work/shared")):
        if root:
            candidate = pathlib.Path(root, "data", *parts)
            if candidate.exists():
                return str(candidate)
    return None


def set_fields(config, overrides: dict):
    """Sets dotted config fields (``{"search.window": 2}``), as the CLI would."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config
