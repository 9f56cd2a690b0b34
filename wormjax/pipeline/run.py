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

from wormjax import search as search_lib
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import compact_switch
from wormjax.pipeline import divergence
from wormjax.pipeline import phases
from wormjax.pipeline import resume
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import summary as summary_lib
from wormjax.pipeline import variants as variants_lib
from wormjax.pipeline.variants import Variant

__all__ = ["Variant", "RunLog", "Run", "make_run", "run_variant", "continue_run",
           "fresh_train_state", "noted"]


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


def make_run(task, config, programs, parallel, variant: Variant, seed: int,
             workdir: str, log: RunLog | None = None) -> Run:
    """The context of one run, checkpointing into ``<workdir>/checkpoints``."""
    ckpt = ckpt_lib.RunCheckpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
    return Run(task, config, programs, parallel, variant, seed, workdir, ckpt,
               log or RunLog())


def run_variant(task, config, programs, parallel, variant: Variant, seed: int,
                workdir: str, log: RunLog | None = None) -> dict:
    """Runs (or resumes) one variant from ``seed`` to its summary.

    The initial weights and the data order depend on ``seed`` only, so every
    variant of an experiment starts from the same initialisation.
    """
    return continue_run(make_run(task, config, programs, parallel, variant, seed,
                                 workdir, log))


def fresh_train_state(run: Run):
    """The run's initial train state (weights from its seed), on every device.

    Replicated, so that restored checkpoints land the same way, whatever
    device count wrote them.
    """
    return run.parallel.replicate(state_lib.create_train_state(
        run.task.init_variables(run.seed), run.tx, run.seed))


def _restore(run, ticket_checkpoints: str | None):
    state = fresh_train_state(run)
    eb = run.parallel.replicate(search_lib.init(run.programs.layout.num_entries,
                                                run.search_config))
    if ticket_checkpoints is None or run.ckpt.latest_step() is not None:
        return resume.restore_or_init(run, state, eb)
    source = dataclasses.replace(run, ckpt=ckpt_lib.RunCheckpointer(ticket_checkpoints,
                                                                    max_to_keep=1))
    try:
        progress, tree = resume.restore_or_init(source, state, eb)
    finally:
        source.ckpt.close()
    if progress.phase != "ticket":  # unreadable: set aside, nothing left
        raise ckpt_lib.CorruptCheckpointError(
            f"the ticket in {ticket_checkpoints} is unreadable, so {run.variant.name} "
            "cannot start; delete its search's folder to search again")
    return progress, tree


def continue_run(run: Run, ticket_checkpoints: str | None = None) -> dict:
    """Runs ``run`` to its summary from its newest checkpoint, or else its start.

    Args:
      ticket_checkpoints: where a multi-ratio search saved this arm's ticket
        (``multi_ratio``): a run with no checkpoint of its own starts from it.
    """
    try:
        progress, tree = _restore(run, ticket_checkpoints)
        state, eb, mask, acc = (tree["state"], tree["eb"], tree.get("param_mask"),
                                tree.get("acc"))
        programs, variant = run.programs, run.variant
        model = (compact_switch.compact(run.task, run.tx, programs.counter,
                                        progress.structured["channels"])
                 if progress.structured else compact_switch.dense(programs,
                                                                  variant.placement))
        if progress.phase == "search":
            progress, state, eb = phases.search(run, progress, model, state, eb, acc)
        if progress.phase in ("search", "ticket"):
            progress, model, state, mask = phases.prune(run, progress, model, state, eb)
            acc = None
        if progress.phase == "retrain":
            progress, state = phases.retrain(run, progress, model, state, eb, mask, acc)
            if model.model is not None:  # again on a re-run: same bytes
                compact_switch.save_compact_model(run.workdir, model.model, state, {
                    "variant": variant.name, "seed": run.seed, "ticket": progress.ticket,
                    "restore_epochs": progress.restore_epochs,
                    "prune_ratio": run.search_config.prune_ratio})
            progress = progress.replace(phase="done")  # the last checkpoint ends it
        return summary_lib.run_summary(progress, task=run.task, config=run.config,
                                       variant=variant, seed=run.seed,
                                       costs=programs.costs)
    except divergence.NonFiniteError as err:
        raise noted(run, err) from None
    finally:
        run.ckpt.close()


def noted(run: Run, err: divergence.NonFiniteError) -> divergence.NonFiniteError:
    """``err`` ending with the checkpoint the run can resume from."""
    run.ckpt.wait()  # the failing epoch wrote none: the newest is the one to name
    step = run.ckpt.latest_step()
    meta = run.ckpt.restore_meta(step) if step is not None else {}
    return divergence.with_checkpoint_note(err, run.ckpt, meta)
