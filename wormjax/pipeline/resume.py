"""A run's checkpoints: numbered by training step, restorable inside an epoch.

A checkpoint is numbered by the global training step it holds (both phases
together), so the folders sort like the run. Its metadata is the run's
``Progress.to_json()``. One written on a stop request inside an epoch also
holds the epoch's position (``step_in_epoch``), its metric accumulator and the
time it ran, so the resumed epoch sees the remaining batches, logs and reports
the same numbers as an uninterrupted one. Restore targets are abstract
(``jax.eval_shape``): nothing is allocated to be overwritten.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp

from wormjax.pipeline import compact_switch
from wormjax.pipeline import interrupt
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib
from wormjax.pipeline.progress import Progress

__all__ = ["checkpoint_tree", "global_step", "save", "restore_or_init",
           "stop_inside_epoch", "epoch_start"]


def checkpoint_tree(state, eb, param_mask=None, acc=None) -> dict:
    """The one layout of a checkpoint's arrays: what ``save`` writes and restores."""
    tree = {"state": state, "eb": eb}
    if param_mask is not None:
        tree["param_mask"] = param_mask
    if acc is not None:
        tree["acc"] = acc
    return tree


def global_step(run, progress: Progress) -> int:
    """Training steps taken so far, over both phases: the checkpoint number."""
    return progress.examples_trained // run.task.batch_size + progress.step_in_epoch


def save(run, progress: Progress, tree: dict) -> None:
    """Starts writing ``tree`` with ``progress`` (and the log position) as metadata."""
    progress = progress.replace(logged=run.log.count)
    run.ckpt.save(global_step(run, progress), tree, progress.to_json())


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def _target(run, meta: dict, fresh_state, fresh_eb):
    """The abstract restore target of a checkpoint with metadata ``meta``."""
    sharding = run.parallel.replicated  # placed like the fresh ones: no recompile
    state = fresh_state
    if meta.get("structured"):
        model = compact_switch.compact(run.task, run.tx, run.programs.counter,
                                       meta["structured"]["channels"])
        state = jax.eval_shape(
            lambda v: state_lib.create_train_state(v, run.tx, run.seed), model.abstract)
    mask = None
    if meta["phase"] in ("retrain", "done") and meta.get("has_param_mask"):
        mask = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(
            p.shape, jnp.float32), fresh_state.params)
    acc = jax.eval_shape(steps_lib.zero_metrics) if meta.get("step_in_epoch") else None
    return _abstract(checkpoint_tree(state, fresh_eb, mask, acc), sharding)


def restore_or_init(run, fresh_state, fresh_eb):
    """The newest good checkpoint of the run, or the fresh start.

    Returns:
      ``(progress, tree)``: ``tree`` as ``checkpoint_tree`` lays it out.
    """
    found = run.ckpt.restore_newest_good(
        lambda meta: _target(run, meta, fresh_state, fresh_eb))
    if found is None:
        run.log.rewind(0)
        return Progress(), checkpoint_tree(fresh_state, fresh_eb)
    step, meta, tree = found
    progress = Progress.from_json(meta)
    run.log.rewind(progress.logged)
    logging.info("resumed %s seed %d from checkpoint %d (%s epoch %d, step %d)",
                 run.variant.name, run.seed, step, progress.phase, progress.epoch,
                 progress.step_in_epoch)
    return progress, tree


def stop_inside_epoch(run, progress: Progress, out, t0: float, tree: dict, where: str):
    """Checkpoints the epoch's position and accumulator, then raises Interrupted."""
    before = run.ckpt.latest_step()
    progress = progress.replace(step_in_epoch=out.steps,
                                partial_seconds=time.perf_counter() - t0)
    # No new step since the latest checkpoint: it already holds this point
    # (a search epoch's EB update is redone from it).
    if out.steps and global_step(run, progress) != before:
        save(run, progress, {**tree, "state": out.state, "acc": out.acc})
        run.ckpt.wait()
    raise interrupt.Interrupted(
        interrupt.signal_number(),
        f"{run.variant.name} seed {run.seed} {where}, step {out.steps}; "
        f"checkpoint {run.ckpt.latest_step()}")


def epoch_start(progress: Progress) -> float:
    """The epoch's start time, earlier by the time it ran before a resume."""
    return time.perf_counter() - progress.partial_seconds
