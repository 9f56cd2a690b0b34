"""Several prune ratios searched in one training, each ticket retrained as its own arm.

The Early-Bird code runs three detectors (p = 0.3, 0.5, 0.7) over one training
and saves ``EB-{p}-{epoch}`` when each one stops. Here, with
``search.prune_ratios``, one arm's search trains once while every detector
watches it (``wormjax.multi_search``: stacked states, one compiled update):

1. Search (``phases.search`` with ``MultiSearch``), in ``<arm>_seed<s>/``.
   When a ratio's detector stops, its ticket is saved at once, in
   ``<arm>_seed<s>/tickets/EB-<p>-<epoch>/``: the train state of that
   moment, that ratio's own Early-Bird state, and the ``Progress`` a search of
   that ratio alone would hold (its distances in the records, phase
   ``"ticket"``). Training goes on until every detector has stopped or
   ``search.max_epochs``; a ratio still searching then gets its unconverged
   ticket at ``max_epochs``, as a one-ratio search would.
2. Each ratio's arm, ``<arm>_p<p>_seed<s>/``, prunes its ticket and retrains it
   (``run.continue_run``), exactly as a one-ratio run does after its search:
   it starts from the ticket's state, data position and records. So with
   schedule ``none`` (which never looks at the search state) every arm's
   summary equals that of a one-ratio run of its ratio; its ``prune_ratio``
   field says which it is, and ``shared_search`` names the search it shared.

Truncation can follow one mask: WORM with several ratios follows the named
``search.primary_ratio`` (``multi_search``), and the records' top-level
distances are the primary's. Every step above is checkpointed: a run killed
anywhere resumes to the same summaries.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from wormjax import multi_search
from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax.pipeline import phases
from wormjax.pipeline import resume
from wormjax.pipeline import run as run_lib
from wormjax.pipeline import compact_switch
from wormjax.pipeline import divergence
from wormjax.pipeline import summary as summary_lib
from wormjax.pipeline import variants as variants_lib
from wormjax.pipeline.progress import Progress

__all__ = ["MultiSearch", "ticket_dir", "run_multi"]


def ticket_dir(run_dir: str, prune_ratio: float, epoch: int) -> str:
    """Where the search in ``run_dir`` keeps the ticket of ``prune_ratio``."""
    return os.path.join(run_dir, "tickets", f"EB-{prune_ratio:g}-{epoch}")


class MultiSearch(phases.SingleSearch):
    """``phases.search``'s view of stacked detectors; saves each ticket as drawn."""

    def __init__(self, run):
        super().__init__(run)
        self.multi = run.programs.multis[run.search_config]
        self.ratios = self.multi.config.prune_ratios

    def update(self, eb, params):
        return self.run.programs.multi_update(self.run.search_config, eb, params)

    def view(self, eb):
        return multi_search.multi_ratio_state(eb, self.multi.config.primary_index)

    def converged(self, eb) -> bool:
        return bool(multi_search.multi_all_converged(eb))

    def truncation(self, eb):
        return self.multi.truncation(eb)

    def record_fields(self, eb, truncation) -> dict:
        host = jax.device_get((eb.converged, eb.d_max, eb.d_avg, eb.dists))  # one copy
        ratios = [{"prune_ratio": p, "converged": bool(host[0][i]),
                   "d_max": float(host[1][i]), "d_avg": float(host[2][i]),
                   "dists": [float(d) for d in host[3][i]]}
                  for i, p in enumerate(self.ratios)]
        return {"eb": self.view(eb), "truncation": truncation, "ratios": ratios}

    def drawn(self, progress: Progress, state, eb, epoch: int) -> Progress:
        progress = super().drawn(progress, state, eb, epoch)
        return self.save_tickets(progress, state, eb, epoch, converged=True)

    def save_tickets(self, progress: Progress, state, eb, epoch: int,
                     converged: bool) -> Progress:
        """Saves the ticket of every ratio whose stop state is ``converged``, once.

        ``converged=True`` after each update (the detectors that have stopped);
        ``False`` at ``max_epochs`` (those still searching, unconverged).
        """
        stopped = jax.device_get(eb.converged)
        for i, p in enumerate(self.ratios):
            if bool(stopped[i]) == converged and str(p) not in (progress.tickets or {}):
                progress = self.save_ticket(progress, state, eb, i, epoch, converged)
        return progress

    def save_ticket(self, progress: Progress, state, eb, index: int, epoch: int,
                    converged: bool) -> Progress:
        """Saves ratio ``index``'s ticket; returns ``progress`` listing it."""
        p = self.ratios[index]
        one = multi_search.multi_ratio_state(eb, index)
        child = _arm_run(self.run, p, ticket_dir(self.run.workdir, p, epoch))
        records = [_arm_record(r, child.variant.name, index)
                   for r in progress.phase_records("search")]
        if converged:  # a one-ratio search records its stopping epoch too
            records.append(summary_lib.epoch_record(child.variant, self.run.seed,
                                                    "search", epoch, eb=one))
        ticket = progress.replace(phase="ticket", records=tuple(records), tickets=None,
                                  ticket={"epoch": epoch, "converged": converged})
        step = resume.global_step(child, ticket)
        if child.ckpt.latest_step() != step:  # else saved before a kill: same bytes
            resume.save(child, ticket, resume.checkpoint_tree(state, one))
        child.ckpt.close()
        return progress.replace(tickets={**(progress.tickets or {}), str(p): {
            "epoch": epoch, "converged": converged, "step": step}})


def _arm_record(record: dict, name: str, index: int) -> dict:
    """A shared-search record as the one-ratio search of ratio ``index`` logs it."""
    out = {k: v for k, v in record.items() if k != "prune_ratios"}
    mine = record["prune_ratios"][index]
    out.update(variant=name, d_max=mine["d_max"], d_avg=mine["d_avg"],
               dists=mine["dists"])
    return out


def _arm_run(parent, prune_ratio: float, checkpoints: str | None = None,
             max_to_keep: int = 1, log=None):
    """The run context of ``prune_ratio``'s arm.

    Args:
      checkpoints: its checkpoint folder; None: ``<its folder>/checkpoints``.
    """
    variant = variants_lib.ratio_variant(parent.variant, prune_ratio)
    workdir = os.path.join(os.path.dirname(parent.workdir),
                           f"{variant.name}_seed{parent.seed}")
    checkpoints = checkpoints or os.path.join(workdir, "checkpoints")
    return dataclasses.replace(
        parent, variant=variant, workdir=workdir, log=log or run_lib.RunLog(),
        ckpt=ckpt_lib.RunCheckpointer(checkpoints, max_to_keep=max_to_keep))


def _search(run) -> Progress:
    """The shared search, resumed or run to its end; returns its final progress."""
    programs = run.programs
    eb = run.parallel.replicate(
        programs.multis[run.search_config].init(programs.layout.num_entries))
    progress, tree = resume.restore_or_init(run, run_lib.fresh_train_state(run), eb)
    if progress.phase == "done":
        return progress
    searcher = MultiSearch(run)
    model = compact_switch.dense(programs, run.variant.placement)
    progress, state, eb = phases.search(run, progress, model, tree["state"], tree["eb"],
                                        tree.get("acc"), searcher=searcher)
    # The detectors still searching at max_epochs end unconverged there.
    progress = searcher.save_tickets(progress, state, eb, progress.epoch, converged=False)
    progress = progress.replace(phase="done")
    resume.save(run, progress, resume.checkpoint_tree(state, eb))
    return progress


def run_multi(task, config, programs, parallel, variant, seed: int, workdir: str,
              open_log) -> list[tuple[str, dict]]:
    """Runs (or resumes) ``variant``'s shared search and every ratio's arm.

    Args:
      workdir: the experiment's folder (each run gets a folder in it).
      open_log: arm name -> context manager yielding that arm's ``RunLog``.

    Returns:
      ``[(arm folder, summary)]``, one per ratio, in ``search.prune_ratios`` order.
    """
    with open_log(variant.name) as log:
        search_run = run_lib.make_run(task, config, programs, parallel, variant, seed,
                                      os.path.join(workdir, f"{variant.name}_seed{seed}"),
                                      log)
        try:
            progress = _search(search_run)
        except divergence.NonFiniteError as err:
            raise run_lib.noted(search_run, err) from None
        finally:
            search_run.ckpt.close()
    ratios = programs.multis[search_run.search_config].config.prune_ratios
    shared = {"variant": variant.name, "prune_ratios": list(ratios),
              "epochs_trained": progress.epoch, "tickets": progress.tickets}
    out = []
    for p in ratios:
        tickets = ticket_dir(search_run.workdir, p, progress.tickets[str(p)]["epoch"])
        with open_log(variants_lib.ratio_variant(variant, p).name) as log:
            arm = _arm_run(search_run, p, max_to_keep=config.checkpoint.max_to_keep,
                           log=log)
            summary = run_lib.continue_run(arm, ticket_checkpoints=tickets)
        out.append((arm.workdir, {**summary, "shared_search": shared}))
    return out
