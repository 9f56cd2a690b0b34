"""Run checkpoints with orbax: atomic, resumable, refusing foreign workdirs.

Orbax writes each step into a temporary folder and renames it only once the
write has committed, so an interrupted save leaves the previous checkpoint as
the latest one; ``max_to_keep`` keeps more than one good step on disk.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from wormjax import report

__all__ = ["RunCheckpointer", "check_workdir_config", "config_fingerprint"]

# Fields that change nothing about what a run computes (the device count
# only changes float rounding), so a run may resume with other values.
_HARMLESS_FIELDS = ("log_every_steps", "progress_bar", "checkpoint.max_to_keep",
                    "data.prefetch", "mesh.data", "mesh.distributed")


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
    return {k: v for k, v in flat.items() if k not in _HARMLESS_FIELDS}


def check_workdir_config(workdir: str, config_dict: dict) -> bool:
    """Records the config in a new workdir, or checks it matches an old one.

    Returns:
      True when the workdir already held this run (a resume).

    Raises:
      ValueError: the workdir holds a run of a different config; it names
        the differing fields and is never overwritten.
    """
    path = os.path.join(workdir, "config.json")
    fingerprint = config_fingerprint(config_dict)
    if not os.path.exists(path):
        report.write_summary(path, config_dict)
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


class RunCheckpointer:
    """One orbax CheckpointManager: a pytree plus JSON metadata per step."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree, meta: dict) -> None:
        """Saves step ``step``; returns once it is committed on disk."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            meta=ocp.args.JsonSave(json.loads(report.to_json(meta)))))
        self._manager.wait_until_finished()

    def restore_meta(self, step: int) -> dict:
        try:
            return self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # orbax raises many types for a bad folder
            raise ValueError(
                f"checkpoint {step} in {self.directory} is unreadable: {err}") from err

    def restore(self, step: int, like) -> Any:
        """Restores the pytree of ``step`` into the structure of ``like``."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract))).state
        except Exception as err:
            raise ValueError(
                f"checkpoint {step} in {self.directory} does not match this run "
                f"(corrupt, or written by another model/config): {err}") from err

    def close(self) -> None:
        self._manager.close()
