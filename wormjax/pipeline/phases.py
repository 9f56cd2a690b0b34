"""The three phases of a run (search, prune, retrain) as functions over values.

Each takes the run's context (``run.Run``: what does not change), the
``Progress`` record and the arrays, and returns new ones; every epoch ends in a
checkpoint, so a run resumes from any of them.
"""

from __future__ import annotations

import functools
import time

import jax

from wormjax import structured
from wormjax import truncation as truncation_lib
from wormjax.pipeline import compact_switch
from wormjax.pipeline import divergence
from wormjax.pipeline import interrupt
from wormjax.pipeline import loop
from wormjax.pipeline import magnitudes_log
from wormjax.pipeline import recalibration
from wormjax.pipeline import resume
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib
from wormjax.pipeline import summary as summary_lib
from wormjax.pipeline.progress import Progress

__all__ = ["train_one_epoch", "evaluate", "SingleSearch", "search", "prune", "retrain"]


def train_one_epoch(run, progress: Progress, state, step_fn, phase: str, epoch: int,
                    t0: float, tree: dict, eb=None, acc=None):
    """One epoch (or its rest, resumed); on a stop request, checkpoints and raises.

    Args:
      tree: the rest of the checkpoint tree (eb, param_mask) if it stops.
      eb: the one-ratio search state the progress bar describes, if any.
      acc: the metric accumulator of a checkpoint written inside this epoch.

    Returns:
      ``(progress, state, train_metrics)``.
    """
    task = run.task

    def on_log(step, running):
        run.log.write({"kind": "step", "variant": run.variant.name, "seed": run.seed,
                       "phase": phase, "step": int(epoch * task.steps_per_epoch + step),
                       "epoch": epoch, "loss": running["loss"],
                       "accuracy": running["accuracy"]})

    start = progress.step_in_epoch
    if not start and run.config.optim.get("reset_each_epoch", False):
        # The authors' new Trainer per epoch: fresh optimizer state and schedule
        # (the step counter, which numbers checkpoints, goes on). A resume inside
        # the epoch keeps the checkpoint's optimizer state.
        state = state.replace(opt_state=run.parallel.replicate(
            run.tx.init(state.params)))
    out = loop.train_epoch(
        step_fn, state, task.train_batches(run.seed, progress.data_epoch, start),
        num_steps=task.steps_per_epoch, log_every=run.config.log_every_steps,
        on_log=on_log, description=summary_lib.bar_label(run.variant, run.seed, phase,
                                                         epoch, eb),
        progress=run.config.progress_bar, prefetch=run.config.data.prefetch,
        put_fn=run.parallel.put_batch, replicate=run.parallel.replicate,
        start_step=start, acc=acc, should_stop=interrupt.stop_requested)
    # Before any checkpoint of this epoch (an interrupted one too), so no
    # checkpoint holds NaN or inf.
    divergence.check_finite(
        {"params": out.state.params, "batch_stats": out.state.batch_stats},
        f"{phase} epoch {epoch}")
    if out.steps < task.steps_per_epoch:
        resume.stop_inside_epoch(run, progress, out, t0, tree, f"{phase} epoch {epoch}")
    progress = progress.replace(
        step_in_epoch=0, partial_seconds=0.0, data_epoch=progress.data_epoch + 1,
        examples_trained=progress.examples_trained
        + task.steps_per_epoch * task.batch_size)
    return progress, out.state, out.metrics


def evaluate(run, model, state) -> dict:
    """Accuracy, loss (and for two classes F1) on the evaluation split."""
    out = loop.evaluate(model.steps.eval, state.params, state.batch_stats,
                        run.task.eval_batches(), prefetch=run.config.data.prefetch,
                        put_fn=run.parallel.put_batch, replicate=run.parallel.replicate)
    if run.task.num_classes != 2:  # class 1 vs the rest means nothing here
        out.pop("f1", None)
    return out


def _train_step(model, state, batch, acc, *, truncation, param_mask=None):
    if param_mask is None:
        return model.steps.train(state, batch, truncation, acc)
    return model.steps.train_masked(state, batch, truncation, acc, param_mask)


class SingleSearch:
    """The paper's search: one Early-Bird state, one prune ratio.

    ``search`` asks its searcher for the epoch-end update, the stop test, the
    truncation the next epoch trains with and the record fields of the state;
    ``multi_ratio.MultiSearch`` answers the same for several ratios at once.
    """

    def __init__(self, run):
        self.run = run

    def update(self, eb, params):
        """The epoch-end Early-Bird update (the public ``early_bird(...).update``)."""
        return self.run.programs.eb_update(self.run.search_config, eb, params)

    def view(self, eb):
        """The one-ratio state the records, the bar and the checks describe."""
        return eb

    def converged(self, eb) -> bool:
        """True once the search has drawn its ticket."""
        return bool(eb.converged)

    def truncation(self, eb):
        """The truncation the next epoch's steps apply."""
        return truncation_lib.truncation_from_eb_state(eb)

    def record_fields(self, eb, truncation) -> dict:
        """``epoch_record`` arguments describing the search state."""
        del truncation  # the state's own flag and r are the truncation's
        return {"eb": eb}

    def drawn(self, progress: Progress, state, eb, epoch: int) -> Progress:
        """Called after every update: records magnitudes; saves tickets (multi-ratio)."""
        del eb
        # Inside an epoch (a resume) the update already ran on other params.
        if (self.run.config.search.get("record_magnitudes", False)
                and not progress.step_in_epoch):
            magnitudes_log.record(self.run.workdir, epoch, self.run.programs.layout,
                                  state.params)
        return progress


def search(run, progress: Progress, model, state, eb, acc=None, searcher=None):
    """Trains with the Early-Bird search until the ticket converges or time is up.

    Args:
      searcher: what the search holds (default ``SingleSearch(run)``).

    Returns:
      ``(progress, state, eb)``; ``progress.ticket`` says where the search ended.
    """
    searcher = searcher or SingleSearch(run)
    max_epochs = run.config.search.max_epochs
    while progress.epoch < max_epochs:
        epoch, t0 = progress.epoch, resume.epoch_start(progress)
        if not progress.step_in_epoch:  # else resumed inside: eb is updated
            eb = searcher.update(eb, state.params)
            divergence.check_search_state(searcher.view(eb), epoch)
        progress = searcher.drawn(progress, state, eb, epoch)
        truncation = searcher.truncation(eb)
        if searcher.converged(eb):
            progress = progress.add_time("search", time.perf_counter() - t0)
            progress = _record(run, progress, summary_lib.epoch_record(
                run.variant, run.seed, "search", epoch,
                **searcher.record_fields(eb, truncation)))
            return progress.replace(ticket={"epoch": epoch, "converged": True}), state, eb
        step_fn = functools.partial(_train_step, model,
                                    truncation=run.parallel.replicate(truncation))
        progress, state, train_metrics = train_one_epoch(
            run, progress, state, step_fn, "search", epoch, t0, {"eb": eb},
            searcher.view(eb), acc)
        acc = None
        evaluation = evaluate(run, model, state)
        seconds = time.perf_counter() - t0
        progress = _record(run, progress.add_time("search", seconds),
                           summary_lib.epoch_record(
                               run.variant, run.seed, "search", epoch,
                               train=train_metrics, evaluation=evaluation,
                               seconds=seconds, steps=run.task.steps_per_epoch,
                               **searcher.record_fields(eb, truncation)))
        progress = progress.replace(epoch=epoch + 1)
        resume.save(run, progress, resume.checkpoint_tree(state, eb))
    return progress.replace(ticket={"epoch": max_epochs, "converged": False}), state, eb


def _record(run, progress: Progress, rec: dict) -> Progress:
    run.log.write(rec)
    return progress.add_record(rec)


def prune(run, progress: Progress, model, state, eb):
    """Prunes the ticket's mask out of the searched state and evaluates the result.

    Not checkpointed: the first retraining epoch's checkpoint holds it, and a
    kill before that redoes the prune (deterministic) from the search's.

    Returns:
      ``(progress, model, state, param_mask)``: the model retraining trains
      (the compact one in structured mode) and its fresh state.
    """
    t0 = time.perf_counter()
    search_evals = [{"accuracy": r["eval_accuracy"], "f1": r.get("eval_f1")}
                    for r in progress.phase_records("search")
                    if r["eval_accuracy"] is not None]
    pre_eval = search_evals[-1] if search_evals else evaluate(run, model, state)
    cfg = run.config.pruning
    if cfg.mode == "structured":
        variables, info = compact_switch.build_compact(
            run.task, state, run.programs.layout, eb.newest_mask, cfg)
        model = compact_switch.compact(run.task, run.tx, run.programs.counter,
                                       info["channels"])
        progress = progress.replace(structured=info)
        param_mask, nonzero = None, info["params_compact"]
    else:
        pruned, nonzero = run.programs.prune(state.params, eb.newest_mask,
                                             run.search_config.prune_ratio)
        variables = {"params": pruned.params, "batch_stats": state.batch_stats}
        param_mask = pruned.param_mask
        if cfg.mode == "mask" and run.task.kind == "image":
            # A silenced channel's conv filter and the input slices reading it are
            # dead too (issue 15 item 4). BERT's masks are not channel tickets: its
            # count stays the non-zero entries.
            nonzero = structured.live_params(
                run.task.model, jax.device_get(variables), run.programs.layout,
                jax.device_get(eb.newest_mask))
    new_state = run.parallel.replicate(
        state_lib.create_train_state(variables, run.tx, run.seed))
    post_eval, stale = evaluate(run, model, new_state), None
    if cfg.get("recalibrate_bn_batches", 0):
        stale = post_eval["accuracy"]
        new_state = recalibration.recalibrated(
            new_state, model.recalibrate,
            run.task.train_batches(run.seed, progress.data_epoch),
            cfg.recalibrate_bn_batches, run.parallel.put_batch)
        post_eval = evaluate(run, model, new_state)
    pre = pre_eval["accuracy"]
    progress = progress.replace(
        pre_prune_accuracy=pre, post_prune_accuracy=post_eval["accuracy"],
        pre_prune_f1=pre_eval.get("f1"), post_prune_f1=post_eval.get("f1"),
        post_prune_accuracy_before_recalibration=stale, phase="retrain", epoch=0,
        has_param_mask=param_mask is not None, pruned_nonzero=int(nonzero),
        target_accuracy=summary_lib.restore_target(run.config.retrain, pre))
    progress = progress.add_time("prune", time.perf_counter() - t0)
    return progress, model, new_state, param_mask


def retrain(run, progress: Progress, model, state, eb, param_mask, acc=None):
    """Retrains the pruned model until it restores the target or time is up.

    Returns:
      ``(progress, state)``; ``progress.restore_epochs`` is None if never restored.
    """
    inactive = run.parallel.replicate(steps_lib.inactive_truncation(model.retrain_entries))
    step_fn = functools.partial(_train_step, model, truncation=inactive,
                                param_mask=param_mask)
    tree = resume.checkpoint_tree(None, eb, param_mask)
    del tree["state"]
    while (progress.epoch < run.config.retrain.max_epochs
           and progress.restore_epochs is None):
        epoch, t0 = progress.epoch, resume.epoch_start(progress)
        progress, state, train_metrics = train_one_epoch(
            run, progress, state, step_fn, "retrain", epoch, t0, tree, acc=acc)
        acc = None
        evaluation = evaluate(run, model, state)
        seconds = time.perf_counter() - t0
        progress = _record(run, progress.add_time("retrain", seconds),
                           summary_lib.epoch_record(
                               run.variant, run.seed, "retrain", epoch,
                               train=train_metrics, evaluation=evaluation,
                               seconds=seconds, truncation=inactive,
                               steps=run.task.steps_per_epoch))
        progress = progress.replace(
            epoch=epoch + 1, examples_retrain=progress.examples_retrain
            + run.task.steps_per_epoch * run.task.batch_size)
        if evaluation["accuracy"] >= progress.target_accuracy:
            progress = progress.replace(restore_epochs=epoch + 1)
        resume.save(run, progress, {**tree, "state": state})
    return progress, state
