"""A run's checkpoints: numbered by training step, restorable inside an epoch.

``Resumable`` is the part of a run that saves and restores it. A checkpoint
is numbered by the global training step it holds (both phases together), so
the folders sort like the run. One written on a stop request inside an epoch
also holds the epoch's position (``step_in_epoch``), its metric accumulator
and the time it ran, so the resumed epoch sees the remaining batches, logs
and reports the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp

from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import interrupt
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib

__all__ = ["Resumable"]


class Resumable:
    """Checkpoint and log bookkeeping mixed into a run.

    The run provides ``res``, ``config``, ``variant``, ``seed``, ``tx``,
    ``ckpt`` (a RunCheckpointer), ``meta`` (the checkpoint metadata),
    ``resume_acc`` and ``use_compact``.
    """

    def global_step(self) -> int:
        """Training steps taken so far, over both phases: the checkpoint number."""
        return (self.meta["examples_trained"] // self.res.task.batch_size
                + self.meta["step_in_epoch"])

    def save(self, tree):
        self.ckpt.save(self.global_step(), tree, self.meta)

    def _like(self, meta, fresh_state, fresh_eb):
        """The restore target of a checkpoint with metadata ``meta``."""
        place = self.res.parallel.replicate  # placed like the fresh ones: no recompile
        like = {"state": fresh_state, "eb": fresh_eb}
        if meta.get("structured"):
            abstract = self.use_compact(meta["structured"]["channels"])
            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                           abstract)
            like["state"] = place(state_lib.create_train_state(zeros, self.tx, self.seed))
        if meta["phase"] in ("retrain", "done") and meta.get("has_param_mask"):
            like["param_mask"] = place(jax.tree_util.tree_map(
                lambda p: jnp.ones(p.shape, jnp.float32), fresh_state.params))
        if meta.get("step_in_epoch"):
            like["acc"] = place(steps_lib.zero_metrics())
        return like

    def restore_or_init(self, fresh_state, fresh_eb):
        found = self.ckpt.restore_newest_good(
            functools.partial(self._like, fresh_state=fresh_state, fresh_eb=fresh_eb))
        if found is None:
            self.res.rewind_log(0)
            return fresh_state, fresh_eb, None
        step, self.meta, tree = found
        self.meta.pop(ckpt_lib.DIGESTS_KEY, None)
        self.res.rewind_log(self.meta.get("logged"))
        self.resume_acc = tree.get("acc")
        logging.info("resumed %s seed %d from checkpoint %d (%s epoch %d, step %d)",
                     self.variant.name, self.seed, step, self.meta["phase"],
                     self.meta["epoch"], self.meta.get("step_in_epoch", 0))
        return tree["state"], tree["eb"], tree.get("param_mask")

    def log(self, rec):
        self.meta["logged"] = self.meta.get("logged", 0) + 1
        self.res.log(rec)

    def stop_inside_epoch(self, out, t0, tree, where):
        """Checkpoints the epoch's position and accumulator, then raises Interrupted."""
        before = self.ckpt.latest_step()
        self.meta.update(step_in_epoch=out.steps,
                         partial_seconds=time.perf_counter() - t0)
        # No new step since the latest checkpoint: it already holds this point
        # (a search epoch's EB update is redone from it).
        if out.steps and self.global_step() != before:
            self.save({**tree, "state": out.state, "acc": out.acc})
            self.ckpt.wait()
        raise interrupt.Interrupted(
            interrupt.signal_number(),
            f"{self.variant.name} seed {self.seed} {where}, step {out.steps}; "
            f"checkpoint {self.ckpt.latest_step()}")

    def epoch_start(self) -> float:
        """The epoch's start time, earlier by the time it ran before a resume."""
        return time.perf_counter() - self.meta.get("partial_seconds", 0.0)

