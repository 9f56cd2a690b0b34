"""Checkpoint integrity: digests of every saved array and of every file of a step.

Orbax keeps no checksum, so flipped bytes in an array file would be restored
silently. Two records catch damage: the sha256 of every array (dtype, shape
and bytes), saved in the step's JSON metadata and checked after a restore,
and the sha256 of every file of a committed step, written inside it once the
write has committed, checked by hashing before orbax reads anything.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

__all__ = ["DIGESTS_KEY", "FILES_NAME", "CorruptCheckpointError", "tree_digests",
           "verify", "seal", "check_files"]

DIGESTS_KEY = "digests"
# Inside each committed step: the sha256 of every other file of the step.
FILES_NAME = "wormjax_files.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be read back whole, or fails its digests."""


def _key_name(path) -> str:
    # Orbax restores dataclasses and tuples as dicts; the names agree either way.
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _leaf_digest(leaf) -> str:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:  # replicated: one shard is the whole value
            leaf = leaf.addressable_data(0)
    array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def tree_digests(tree) -> dict[str, str]:
    """The sha256 of every leaf of ``tree`` (dtype, shape and bytes), by leaf path."""
    return {_key_name(path): _leaf_digest(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def verify(tree, meta: dict, where: str) -> None:
    """Raises if a restored tree's leaf digests differ from those saved in ``meta``."""
    expected = meta.get(DIGESTS_KEY)
    if expected is None:  # written before digests existed: nothing to check
        return
    actual = tree_digests(tree)
    bad = sorted(k for k in set(expected) | set(actual)
                 if expected.get(k) != actual.get(k))
    if bad:
        raise CorruptCheckpointError(
            f"{where} fails its digest check ({len(bad)} of {len(expected)} arrays "
            f"differ from what was saved, e.g. {bad[0]!r})")


def _file_digests(step_dir: str) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel in (FILES_NAME, FILES_NAME + ".tmp"):
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[rel] = digest.hexdigest()
    return out


def seal(step_dir: str) -> None:
    """Records the sha256 of every file of a committed step inside it.

    Damaged files are then found by hashing, before orbax reads them: a read
    of a damaged tensorstore file fails inside orbax's event loop and floods
    stderr with "Event loop is closed" tracebacks from its threads.
    """
    if not os.path.isdir(step_dir):  # already removed by max_to_keep
        return
    tmp = os.path.join(step_dir, FILES_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_file_digests(step_dir), f, sort_keys=True)
    os.replace(tmp, os.path.join(step_dir, FILES_NAME))


def check_files(step_dir: str) -> None:
    """Raises if a sealed checkpoint step's files differ from their recorded digests."""
    path = os.path.join(step_dir, FILES_NAME)
    if not os.path.exists(path):  # committed but not sealed (killed at once)
        return
    try:
        with open(path, encoding="utf-8") as f:
            expected = json.load(f)
        actual = _file_digests(step_dir)
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(f"unreadable: {type(err).__name__}: {err}") from err
    bad = sorted(k for k in expected if actual.get(k) != expected[k])
    if bad:
        raise CorruptCheckpointError(
            f"{len(bad)} of its {len(expected)} files are missing or changed since "
            f"they were written, e.g. {bad[0]}")
