"""Run checkpoints with orbax: atomic, verified, resumable, refusing foreign workdirs.

Orbax writes each step into a temporary folder and renames it only once the
write has committed, so an interrupted save leaves the previous checkpoint as
the latest one; ``max_to_keep`` keeps more than one good step on disk. Orbax
keeps no checksum, so the metadata of every step holds the sha256 of each
saved array, checked after every restore. A step that cannot be read whole or
fails its digests is set aside (renamed ``<step>.corrupt-<time>``, never
deleted) and the next-newest is used instead.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from wormjax import _validate
from wormjax.pipeline import report
from wormjax.pipeline.checkpoint_integrity import (DIGESTS_KEY, FILES_NAME,  # noqa: F401
                                         CorruptCheckpointError, check_files, seal,
                                         tree_digests, verify)

__all__ = ["RunCheckpointer", "CorruptCheckpointError", "check_workdir_config",
           "record_workdir_config", "config_fingerprint", "config_semantics",
           "tree_digests", "set_aside_unreadable"]

# Fields that change nothing about what a run computes (the device count
# only changes float rounding), so a run may resume with other values.
# data.dir says where the data is, not what it is: a moved or extracted data
# set resumes (data.source, which picks the reader, stays part of the run).
_HARMLESS_FIELDS = ("log_every_steps", "progress_bar", "checkpoint.max_to_keep",
                    "data.prefetch", "mesh.data", "mesh.distributed", "data.dir",
                    "search.record_magnitudes")
# Fields added after workdirs were written, with the value that behaves as
# before they existed: a workdir whose config lacks one resumes under it.
_ADDED_FIELDS = {"search.prune_ratios": "", "search.primary_ratio": 0.0}


def config_semantics(config_dict: dict) -> dict[str, str]:
    """Markers for config fields whose meaning changed after workdirs used them.

    The run stores them under ``semantics`` in its ``config.json``. A workdir
    written before a change lacks the marker, so resuming it is refused by
    ``check_workdir_config`` (the same config would otherwise train on other
    data without a word); a run the change does not touch gets no marker and
    resumes as before.
    """
    marks = {}
    data = config_dict.get("data", {})
    if config_dict.get("task", "image") == "text" and data.get("train_limit", 0):
        # Text data.train_limit took the first N shuffled examples until it
        # became class-balanced, as image subsets always were.
        marks["text_train_limit"] = "class-balanced"
    return marks



def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_fingerprint(config_dict: dict) -> dict[str, Any]:
    """The config fields that determine a run's numbers, flattened."""
    flat = _flatten(json.loads(json.dumps(config_dict, default=str)))
    return {k: v for k, v in flat.items() if k not in _HARMLESS_FIELDS
            and not (k in _ADDED_FIELDS and v == _ADDED_FIELDS[k])}


def check_workdir_config(workdir: str, config_dict: dict) -> bool:
    """Checks the config matches the one a workdir's run was started with.

    A new workdir is only recorded (``record_workdir_config``) once its run
    has started, so a start that fails (a bad ``data.dir``) poisons nothing.

    Returns:
      True when the workdir already held this run (a resume).

    Raises:
      ValueError: the workdir holds a run of a different config; it names
        the differing fields and is never overwritten.
    """
    path = os.path.join(workdir, "config.json")
    fingerprint = config_fingerprint(config_dict)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            old = config_fingerprint(json.load(f))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}); use a new --workdir") from None
    diff = sorted(k for k in set(old) | set(fingerprint)
                  if old.get(k, "<absent>") != fingerprint.get(k, "<absent>"))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k, '<absent>')!r} -> "
                          f"{fingerprint.get(k, '<absent>')!r}" for k in diff[:8])
        raise ValueError(
            f"workdir {workdir} holds a run of a different config ({shown}"
            f"{', ...' if len(diff) > 8 else ''}). It was left untouched: pass a "
            "new --workdir, or the same config to resume.")
    return True


def record_workdir_config(workdir: str, config_dict: dict) -> None:
    """Writes ``<workdir>/config.json``, the identity later resumes are checked against."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        report.write_summary(path, config_dict)


def _set_aside(directory: str, step: int, reason: Exception) -> str:
    """Renames a bad step out of orbax's numbering; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(directory, f"{step}.corrupt-{stamp}")
    suffix = 0
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(directory, f"{step}.corrupt-{stamp}-{suffix}")
    os.rename(os.path.join(directory, str(step)), target)
    logging.warning("checkpoint %d in %s is unusable (%s); set it aside as %s and "
                    "trying the previous one", step, directory, reason, target)
    return target


def _step_folders(directory: str) -> list[int]:
    """The committed steps of a checkpoint folder, newest first."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(n) for n in os.listdir(directory)
                   if n.isdigit() and os.path.isdir(os.path.join(directory, n))),
                  reverse=True)


def _read_meta(step_dir: str) -> dict:
    with open(os.path.join(step_dir, "meta", "metadata"), encoding="utf-8") as f:
        return json.load(f)


def _check_on_host(step_dir: str) -> None:
    """Checks a step's files, then reads its metadata and every array (as numpy)
    and checks the array digests."""
    check_files(step_dir)
    path = os.path.join(step_dir, "state")
    try:
        meta = _read_meta(step_dir)
        # Closed on the way out, so no thread of it outlives a failed read.
        with ocp.PyTreeCheckpointer() as checkpointer:
            item = checkpointer.metadata(path).item_metadata
            if item is None:
                raise FileNotFoundError(f"no array metadata in {path}")
            restore_args = jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item.tree)
            tree = checkpointer.restore(path, restore_args=restore_args)
    except Exception as err:  # orbax/tensorstore raise many types for a bad folder
        raise CorruptCheckpointError(f"unreadable: {type(err).__name__}: {err}") from err
    verify(tree, meta, "it")


def set_aside_unreadable(directory: str) -> list[str]:
    """Sets aside the newest steps of ``directory`` until one reads back whole.

    Runs on the host before anything compiles, so a bad checkpoint is found at
    once instead of after the warm-up. It reads every array of the newest good
    step (once more at the restore itself, into the run's shardings): cheap
    next to a training epoch, and the only check that sees flipped bytes.

    Args:
      directory: a run's checkpoint folder (may not exist yet).

    Returns:
      The paths the bad steps were renamed to, newest first.
    """
    moved = []
    for step in _step_folders(directory):
        try:
            _check_on_host(os.path.join(directory, str(step)))
            break
        except CorruptCheckpointError as err:
            moved.append(_set_aside(directory, step, err))
    return moved


class RunCheckpointer:
    """One orbax CheckpointManager: a pytree plus JSON metadata per step.

    Saves are asynchronous: ``save`` returns once the arrays are copied off
    the devices and orbax writes (and atomically commits) them in the
    background; every restore and ``close`` waits for that write first.

    Args:
      directory: the checkpoint folder, created if missing.
      max_to_keep: committed steps kept on disk, >= 1 (one more than the
        newest lets a corrupt newest step fall back to the previous one).
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        _validate.at_least("checkpoint.max_to_keep", max_to_keep, 1)
        self.directory = os.path.abspath(directory)
        self._pending: int | None = None  # saved, not yet sealed
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=True),
        )

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, tree, meta: dict) -> None:
        """Starts saving ``tree`` and ``meta`` (plus the tree's digests) as ``step``.

        Args:
          step: the checkpoint's number (the run's global training step).
          tree: a pytree of arrays; safe to donate once this returns.
          meta: JSON-able bookkeeping; ``restore`` returns it.
        """
        meta = dict(meta, **{DIGESTS_KEY: tree_digests(tree)})
        self._seal_pending()  # orbax would wait for the previous save anyway
        self._pending = step
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            meta=ocp.args.JsonSave(json.loads(report.to_json(meta)))))

    def wait(self) -> None:
        """Blocks until the save in flight, if any, is committed (and sealed)."""
        self._seal_pending()

    def _seal_pending(self) -> None:
        self._manager.wait_until_finished()
        if self._pending is not None:
            seal(os.path.join(self.directory, str(self._pending)))
            self._pending = None

    def restore_meta(self, step: int) -> dict:
        """The metadata of ``step``; raises CorruptCheckpointError if unreadable."""
        self.wait()
        try:
            return self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # orbax raises many types for a bad folder
            raise CorruptCheckpointError(
                f"checkpoint {step} in {self.directory} is unreadable: {err}") from err

    def restore(self, step: int, like, meta: dict | None = None) -> Any:
        """Restores the pytree of ``step`` into the structure of ``like``, verified.

        Args:
          step: the step to read.
          like: a pytree of arrays with the shapes, dtypes and shardings wanted.
          meta: the step's metadata (read again when None), for the digests.

        Raises:
          CorruptCheckpointError: unreadable, another structure, or a digest
            differs from the one saved.
        """
        meta = self.restore_meta(step) if meta is None else meta
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            tree = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract))).state
        except Exception as err:
            raise CorruptCheckpointError(
                f"checkpoint {step} in {self.directory} does not match this run "
                f"(corrupt, or written by another model/config): {err}") from err
        verify(tree, meta, f"checkpoint {step} in {self.directory}")
        return tree

    def restore_newest_good(self, like_fn: Callable[[dict], Any]):
        """Restores the newest step that reads back whole, setting bad ones aside.

        Args:
          like_fn: metadata -> the ``like`` tree of ``restore`` for that step.

        Returns:
          (step, meta, tree), or None when no step is left (a fresh start).
        """
        self.wait()
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                meta = self.restore_meta(step)
                return step, meta, self.restore(step, like_fn(meta), meta)
            except CorruptCheckpointError as err:
                _set_aside(self.directory, step, err)
                self._manager.reload()
        return None

    def close(self) -> None:
        """Waits for the save in flight and releases orbax's threads."""
        self._seal_pending()
        self._manager.close()
