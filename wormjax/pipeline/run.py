"""One search -> ticket -> prune -> retrain run, resumable at every epoch.

``run_variant`` is the paper's Algorithm 1: train with the Early-Bird search
(WORM truncating once the mask settles) until the ticket is drawn, prune it,
retrain to the restore target. The phases (``phases``) pass the run's
``Progress`` record along; every epoch ends in a checkpoint holding it, so a
run killed at any point resumes where its last checkpoint left it and ends with
the same summary as an uninterrupted one. A stop request (SIGINT, SIGTERM) ends
the current step and checkpoints inside the epoch (``resume``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import compact_switch
from wormjax.pipeline import divergence
from wormjax.pipeline import phases
from wormjax.pipeline import resume
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import summary as summary_lib
from wormjax.pipeline import variants as variants_lib
from wormjax.pipeline.variants import Variant

__all__ = ["Variant", "RunLog", "Run", "run_variant"]


class RunLog:
    """Writes a run's records, counting them so that a resume can rewind the log."""

    def __init__(self, write: Callable[[dict], None] = lambda record: None,
                 rewind: Callable[[int], None] = lambda n: None):
        self._write, self._rewind, self.count = write, rewind, 0

    def write(self, record: dict) -> None:
        """Logs one record (a step or an epoch)."""
        self.count += 1
        self._write(record)

    def rewind(self, count: int | None) -> None:
        """Keeps the first ``count`` records, dropping those a resume replays."""
        self.count = count or 0
        self._rewind(self.count)


@dataclasses.dataclass(frozen=True)
class Run:
    """What one run of an experiment holds fixed: its task, programs and place."""

    task: Any
    config: Any
    programs: Any  # programs.Programs
    parallel: Any  # distributed.DataParallel: mesh and shardings
    variant: Variant
    seed: int
    workdir: str
    ckpt: ckpt_lib.RunCheckpointer
    log: RunLog

    @property
    def tx(self):
        """The optimizer of the variant's truncation placement."""
        return self.programs.txs[self.variant.placement]

    @property
    def search_config(self):
        """The variant's Early-Bird search config."""
        return variants_lib.search_config(self.config, self.variant)


def run_variant(task, config, programs, parallel, variant: Variant, seed: int,
                workdir: str, log: RunLog | None = None) -> dict:
    """Runs (or resumes) one variant from ``seed`` to its summary.

    The initial weights and the data order depend on ``seed`` only, so every
    variant of an experiment starts from the same initialisation.
    """
    ckpt = ckpt_lib.RunCheckpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
    run = Run(task, config, programs, parallel, variant, seed, workdir, ckpt,
              log or RunLog())
    try:
        # Replicated on every device; restored checkpoints land the same way,
        # whatever device count wrote them.
        state = parallel.replicate(state_lib.create_train_state(
            task.init_variables(seed), run.tx, seed))
        eb = parallel.replicate(programs.searches[run.search_config].init(
            programs.layout.num_entries))
        progress, tree = resume.restore_or_init(run, state, eb)
        state, eb, mask, acc = (tree["state"], tree["eb"], tree.get("param_mask"),
                                tree.get("acc"))
        model = (compact_switch.compact(task, run.tx, programs.counter,
                                        progress.structured["channels"])
                 if progress.structured else compact_switch.dense(programs,
                                                                  variant.placement))
        if progress.phase == "search":
            progress, state, eb = phases.search(run, progress, model, state, eb, acc)
            progress, model, state, mask = phases.prune(run, progress, model, state, eb)
            acc = None
        if progress.phase == "retrain":
            progress, state = phases.retrain(run, progress, model, state, eb, mask, acc)
            if model.model is not None:  # again on a re-run: same bytes
                compact_switch.save_compact_model(workdir, model.model, state, {
                    "variant": variant.name, "seed": seed, "ticket": progress.ticket,
                    "restore_epochs": progress.restore_epochs,
                    "prune_ratio": config.search.prune_ratio})
            progress = progress.replace(phase="done")  # the last checkpoint ends it
        return summary_lib.run_summary(progress, task=task, config=config,
                                       variant=variant, seed=seed,
                                       costs=programs.costs)
    except divergence.NonFiniteError as err:
        ckpt.wait()  # the failing epoch wrote none: the newest is the one to name
        step = ckpt.latest_step()
        meta = ckpt.restore_meta(step) if step is not None else {}
        raise divergence.with_checkpoint_note(err, ckpt, meta) from None
    finally:
        ckpt.close()
