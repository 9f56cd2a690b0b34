"""One search -> ticket -> prune -> retrain run, resumable at every epoch.

The phase, epoch, per-epoch records and accumulated times live in the
checkpoint's metadata, next to the train state and the Early-Bird state, so a
run killed at any point resumes where its last checkpoint left it and ends
with the same summary as an uninterrupted one. A stop request (SIGINT,
SIGTERM) ends the current step and checkpoints inside the epoch
(``wormjax.pipeline.resume``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from wormjax.pipeline import checkpoint as ckpt_lib
from wormjax import pruning
from wormjax.pipeline import report
from wormjax import search as search_lib
from wormjax import structured
from wormjax import truncation as truncation_lib
from wormjax.models import common as model_common
from wormjax.pipeline import divergence
from wormjax.pipeline import interrupt
from wormjax.pipeline import loop
from wormjax.pipeline import recalibration
from wormjax.pipeline import resume as resume_lib
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib

__all__ = ["Variant", "RunResources", "run_variant", "restore_target"]



class PrunedCopy(NamedTuple):
    params: Any
    param_mask: Any | None
    nonzero: jax.Array


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a truncation schedule with its r and placement."""

    name: str
    schedule: str
    truncation_ratio: float
    placement: str = "gradient"


@dataclasses.dataclass
class RunResources:
    """What every run of an experiment shares: task, compiled steps, counters."""

    task: Any
    config: Any
    counter: steps_lib.CompileCounter
    txs: dict  # placement -> optimizer (each compiled once)
    steps: dict  # placement -> StepFns
    layout: Any
    flops_per_example: float  # dense forward, at the longest input (text: bucket)
    num_params: int
    parallel: Any = None  # distributed.DataParallel: mesh and shardings
    log: Callable[[dict], None] = lambda record: None
    # Keeps a run's first n logged records, dropping those a resume replays.
    rewind_log: Callable[[int], None] = lambda n: None
    compile_seconds: float = 0.0
    # Dense forward FLOPs per trained example, averaged over an epoch's batch shapes
    # (text: length buckets); None means flops_per_example.
    train_flops_per_example: float | None = None
    _prune: Callable | None = None

    def prune_fn(self, params, keep_flat) -> pruning.Pruned:
        """Prunes a copy of ``params`` in one compiled call (config.pruning.mode)."""
        if self._prune is None:
            def prune(params, keep_flat):
                self.counter.hit("prune")
                out = pruning.prune(
                    self.config.pruning.mode, params, layout=self.layout,
                    keep_flat=keep_flat, prune_ratio=self.config.search.prune_ratio,
                    persistent_reference_mask=self.task.persistent_reference_mask)
                nonzero = sum(jnp.count_nonzero(x) for x in
                              jax.tree_util.tree_leaves(out.params))
                return out, nonzero
            self._prune = jax.jit(prune)
        out, nonzero = self._prune(params, keep_flat)
        return PrunedCopy(out.params, out.param_mask, nonzero)
    eb_updates: dict = dataclasses.field(default_factory=dict)  # config -> jitted
    recalibrate_fns: dict = dataclasses.field(default_factory=dict)  # model -> jitted

    def eb_update_fn(self, search_config: search_lib.EarlyBirdConfig) -> Callable:
        """The jitted epoch-end update for a search config, compiled once."""
        if search_config not in self.eb_updates:
            def update(eb, params):
                self.counter.hit("eb_update")
                return search_lib.update(eb, self.layout.representative(params),
                                         search_config)
            self.eb_updates[search_config] = jax.jit(update)
        return self.eb_updates[search_config]


def restore_target(retrain_cfg, pre_prune_accuracy: float) -> float:
    """The accuracy retraining must reach: absolute, or relative to pre-prune."""
    if retrain_cfg.target_kind == "absolute":
        return float(retrain_cfg.target)
    return float(retrain_cfg.target) * float(pre_prune_accuracy)


def _search_config(config, variant: Variant) -> search_lib.EarlyBirdConfig:
    s = config.search
    return search_lib.EarlyBirdConfig(
        prune_ratio=s.prune_ratio, window=s.window, stop_distance=s.stop_distance,
        trigger_margin=s.trigger_margin, truncation_ratio=variant.truncation_ratio,
        schedule=variant.schedule)


def _num_classes(task) -> int | None:
    """The classifier's outputs: CNNs name them num_classes, BERT num_labels."""
    model = getattr(task, "model", None)
    return getattr(model, "num_classes", None) or getattr(model, "num_labels", None)


def _epoch_record(variant, seed, phase, epoch, eb=None, train=None, evaluation=None,
                  seconds=0.0, steps=0, truncation=None):
    # "ratio" is the multiplier in effect: 1.0 while truncation is off, whatever r
    # the search holds for later. "eval_f1" only where evaluate() kept an F1.
    rec = {"kind": "epoch", "variant": variant.name, "seed": seed, "phase": phase,
           "epoch": epoch, "d_max": None, "d_avg": None, "dists": None,
           "truncation_active": False, "ratio": 1.0, "train_loss": None,
           "train_accuracy": None, "eval_accuracy": None, "eval_loss": None,
           "epoch_time": seconds, "steps": steps}
    if eb is not None:
        rec.update(d_max=float(eb.d_max), d_avg=float(eb.d_avg),
                   dists=[float(d) for d in eb.dists],
                   truncation_active=bool(eb.active),
                   ratio=float(eb.ratio) if bool(eb.active) else 1.0)
    if truncation is not None:
        rec.update(truncation_active=bool(truncation.active),
                   ratio=float(truncation.ratio) if bool(truncation.active) else 1.0)
    if train is not None:
        rec.update(train_loss=train["loss"], train_accuracy=train["accuracy"])
    if evaluation is not None:
        rec.update(eval_accuracy=evaluation["accuracy"], eval_loss=evaluation["loss"])
        if evaluation.get("f1") is not None:
            rec["eval_f1"] = evaluation["f1"]
    return rec


def _bar_label(variant, seed, phase, epoch, eb) -> str:
    label = f"{variant.name} s{seed} {phase} {epoch}"
    if eb is not None:  # already on the host for the epoch record
        label += (f" d_max {float(eb.d_max):.3f} d_avg {float(eb.d_avg):.3f}"
                  f"{' trunc' if bool(eb.active) else ''}")
    return label


class _Run(resume_lib.Resumable):
    """The mutable bookkeeping of one run; all of it goes into checkpoints."""

    def __init__(self, res: RunResources, variant: Variant, seed: int, workdir: str):
        self.res, self.variant, self.seed = res, variant, seed
        self.config = res.config
        self.workdir = workdir
        self.search = search_lib.early_bird(_search_config(self.config, variant))
        self.tx = res.txs[variant.placement]
        self.steps = res.steps[variant.placement]
        self.ckpt = ckpt_lib.RunCheckpointer(
            os.path.join(workdir, "checkpoints"),
            max_to_keep=self.config.checkpoint.max_to_keep)
        self.meta = {"phase": "search", "epoch": 0, "data_epoch": 0,
                     "step_in_epoch": 0, "logged": 0, "records": [],
                     "examples_trained": 0,
                     "times": {"search": 0.0, "prune": 0.0, "retrain": 0.0},
                     "ticket": None, "pre_prune_accuracy": None,
                     "post_prune_accuracy": None, "restore_epochs": None,
                     "target_accuracy": None, "pruned_nonzero": None,
                     "examples_retrain": 0, "structured": None}
        self.eb_update = res.eb_update_fn(self.search.config)
        self.retrain_entries = res.layout.num_entries
        self.compact_model = None
        self.resume_acc = None  # the accumulator of a checkpoint inside an epoch

    def use_compact(self, channels):
        """Switches the steps to the compact model of structured pruning.

        The optimizer chain holds no shapes, so it is reused; the steps are
        compiled again, once, for the narrower model.
        """
        task = self.res.task
        self.compact_model = task.compact_model(channels)
        self.steps = steps_lib.make_steps(
            functools.partial(task.forward, model=self.compact_model), self.tx,
            self.res.counter)
        abstract = model_common.abstract_variables(self.compact_model,
                                                   task.input_shape)
        self.retrain_entries = task.selector(abstract["params"]).num_entries
        return abstract

    def record(self, rec):
        self.meta["records"].append(rec)
        self.log(rec)

    # -- phases ------------------------------------------------------------
    def train_one_epoch(self, state, step_fn, phase, epoch, t0, tree, eb=None):
        """One epoch (or its rest, resumed); on a stop request, checkpoints and raises.

        Args:
          tree: the rest of the checkpoint tree (eb, param_mask) if it stops.
        """
        def on_log(step, running):
            self.log({"kind": "step", "variant": self.variant.name,
                          "seed": self.seed, "phase": phase,
                          "step": int(epoch * self.res.task.steps_per_epoch + step),
                          "epoch": epoch, "loss": running["loss"],
                          "accuracy": running["accuracy"]})

        start = self.meta["step_in_epoch"]
        batches = self.res.task.train_batches(self.seed, self.meta["data_epoch"], start)
        out = loop.train_epoch(
            step_fn, state, batches, num_steps=self.res.task.steps_per_epoch,
            log_every=self.config.log_every_steps, on_log=on_log,
            description=_bar_label(self.variant, self.seed, phase, epoch, eb),
            progress=self.config.progress_bar, prefetch=self.config.data.prefetch,
            put_fn=self.res.parallel.put_batch, replicate=self.res.parallel.replicate,
            start_step=start, acc=self.resume_acc,
            should_stop=interrupt.stop_requested)
        self.resume_acc = None
        # Before any checkpoint of this epoch (an interrupted one too), so no
        # checkpoint holds NaN or inf.
        divergence.check_finite(
            {"params": out.state.params, "batch_stats": out.state.batch_stats},
            f"{phase} epoch {epoch}")
        if out.steps < self.res.task.steps_per_epoch:
            self.stop_inside_epoch(out, t0, tree, f"{phase} epoch {epoch}")
        self.meta.update(step_in_epoch=0, partial_seconds=0.0)
        self.meta["data_epoch"] += 1
        self.meta["examples_trained"] += (self.res.task.steps_per_epoch
                                          * self.res.task.batch_size)
        return out.state, out.metrics, out.seconds

    def evaluate(self, state):
        out = loop.evaluate(self.steps.eval, state.params, state.batch_stats,
                            self.res.task.eval_batches(),
                            prefetch=self.config.data.prefetch,
                            put_fn=self.res.parallel.put_batch, replicate=self.res.parallel.replicate)
        if _num_classes(self.res.task) != 2:  # class 1 vs the rest means nothing here
            out.pop("f1", None)
        return out

    def run_search(self, state, eb):
        max_epochs = self.config.search.max_epochs
        while self.meta["epoch"] < max_epochs:
            epoch = self.meta["epoch"]
            t0 = self.epoch_start()
            if not self.meta["step_in_epoch"]:  # else resumed inside: eb is updated
                eb = self.eb_update(eb, state.params)
                divergence.check_search_state(eb, epoch)
            if bool(eb.converged):
                self.meta["times"]["search"] += time.perf_counter() - t0
                self.record(_epoch_record(self.variant, self.seed, "search", epoch,
                                          eb=eb))
                self.meta["ticket"] = {"epoch": epoch, "converged": True}
                return state, eb
            truncation = self.res.parallel.replicate(
                truncation_lib.truncation_from_eb_state(eb))
            step_fn = functools.partial(self._train_step, truncation=truncation)
            state, train_metrics, _ = self.train_one_epoch(
                state, step_fn, "search", epoch, t0, {"eb": eb}, eb)
            evaluation = self.evaluate(state)
            seconds = time.perf_counter() - t0
            self.meta["times"]["search"] += seconds
            self.record(_epoch_record(self.variant, self.seed, "search", epoch, eb=eb,
                                      train=train_metrics, evaluation=evaluation,
                                      seconds=seconds,
                                      steps=self.res.task.steps_per_epoch))
            self.meta["epoch"] = epoch + 1
            self.save({"state": state, "eb": eb})
        self.meta["ticket"] = {"epoch": max_epochs, "converged": False}
        return state, eb

    def _train_step(self, state, batch, acc, *, truncation, param_mask=None):
        if param_mask is None:
            return self.steps.train(state, batch, truncation, acc)
        return self.steps.train_masked(state, batch, truncation, acc, param_mask)

    def prune(self, state, eb):
        t0 = time.perf_counter()
        search_evals = [r["eval_accuracy"] for r in self.meta["records"]
                        if r["phase"] == "search" and r["eval_accuracy"] is not None]
        pre = search_evals[-1] if search_evals else self.evaluate(state)["accuracy"]
        if self.config.pruning.mode == "structured":
            variables = self._build_compact(state, eb)
            pruned = PrunedCopy(variables["params"], None,
                                self.meta["structured"]["params_compact"])
        else:
            pruned = self.res.prune_fn(state.params, eb.newest_mask)
            variables = {"params": pruned.params, "batch_stats": state.batch_stats}
        new_state = self.res.parallel.replicate(
            state_lib.create_train_state(variables, self.tx, self.seed))
        post, stale = self.evaluate(new_state)["accuracy"], None
        if self.config.pruning.get("recalibrate_bn_batches", 0):
            stale, new_state = post, self._recalibrate(new_state)
            post = self.evaluate(new_state)["accuracy"]
        self.meta.update(pre_prune_accuracy=pre, post_prune_accuracy=post,
                         post_prune_accuracy_before_recalibration=stale,
                         phase="retrain", epoch=0,
                         has_param_mask=pruned.param_mask is not None,
                         pruned_nonzero=int(pruned.nonzero),
                         target_accuracy=restore_target(self.config.retrain, pre))
        self.meta["times"]["prune"] += time.perf_counter() - t0
        # Not checkpointed: the first retraining epoch's checkpoint holds it, and
        # a kill before that redoes the prune (deterministic) from the search's.
        return new_state, pruned.param_mask

    def _recalibrate(self, state):
        """Fresh BatchNorm statistics on the next epoch's first batches (no update)."""
        fns = self.res.recalibrate_fns  # one compilation per model shape
        key = self.compact_model  # None: the dense model
        if key not in fns:
            fns[key] = recalibration.stats_fn(
                functools.partial(self.res.task.forward, model=key), self.res.counter)
        return recalibration.recalibrated(
            state, fns[key], self.res.task.train_batches(self.seed, self.meta["data_epoch"]),
            self.config.pruning.recalibrate_bn_batches, self.res.parallel.put_batch)

    def _build_compact(self, state, eb):
        """A narrower copy holding only the ticket's channels (structured mode)."""
        cfg = self.config.pruning
        host = jax.device_get({"params": state.params,
                               "batch_stats": state.batch_stats})
        _, variables, info = structured.build_compact(
            self.res.task.model, host, self.res.layout,
            jax.device_get(eb.newest_mask), min_channels=cfg.min_channels,
            channel_multiple=cfg.channel_multiple)
        self.use_compact(info["channels"])
        # Through JSON now, so the summary equals the one a resumed run reads
        # back from the checkpoint metadata (tuples become lists).
        self.meta["structured"] = json.loads(report.to_json({
            "channels": info["channels"], "bn_channels": info["bn_channels"],
            "floored": info["floored"], "shortcut_rule": info["shortcut_rule"],
            "params_compact": info["params_compact"],
            "forward_flops_compact": self.res.task.forward_flops_per_example(
                variables, self.compact_model)}))
        return variables

    def save_compact_model(self, state) -> None:
        """Writes the retrained compact model, loadable alone (load_compact)."""
        variables = jax.device_get({"params": state.params,
                                    "batch_stats": state.batch_stats})
        structured.save_compact(
            os.path.join(self.workdir, "compact_model"), self.compact_model, variables,
            extra_meta={"variant": self.variant.name, "seed": self.seed,
                        "ticket": self.meta["ticket"],
                        "restore_epochs": self.meta["restore_epochs"],
                        "prune_ratio": self.config.search.prune_ratio},
            overwrite=True)

    def run_retrain(self, state, eb, param_mask):
        inactive = self.res.parallel.replicate(
            steps_lib.inactive_truncation(self.retrain_entries))
        step_fn = functools.partial(self._train_step, truncation=inactive,
                                    param_mask=param_mask)
        target = self.meta["target_accuracy"]
        tree = {"eb": eb}
        if param_mask is not None:
            tree["param_mask"] = param_mask
        while (self.meta["epoch"] < self.config.retrain.max_epochs
               and self.meta["restore_epochs"] is None):
            epoch = self.meta["epoch"]
            t0 = self.epoch_start()
            state, train_metrics, _ = self.train_one_epoch(state, step_fn, "retrain",
                                                           epoch, t0, tree)
            evaluation = self.evaluate(state)
            seconds = time.perf_counter() - t0
            self.meta["times"]["retrain"] += seconds
            self.record(_epoch_record(self.variant, self.seed, "retrain", epoch,
                                      train=train_metrics, evaluation=evaluation,
                                      seconds=seconds, truncation=inactive,
                                      steps=self.res.task.steps_per_epoch))
            self.meta["epoch"] = epoch + 1
            self.meta["examples_retrain"] += (self.res.task.steps_per_epoch
                                              * self.res.task.batch_size)
            if evaluation["accuracy"] >= target:
                self.meta["restore_epochs"] = epoch + 1
            self.save({**tree, "state": state})
        return state

    def summary(self) -> dict:
        meta, cfg = self.meta, self.config
        retrain = [r for r in meta["records"] if r["phase"] == "retrain"]
        times = dict(meta["times"])
        times["total"] = times["search"] + times["prune"] + times["retrain"]
        flops = self.res.flops_per_example
        train_flops = self.res.train_flops_per_example or flops
        compact = meta.get("structured") or {}
        pruned_flops = compact.get("forward_flops_compact")
        retrain_examples = meta.get("examples_retrain", 0)
        judged = divergence.verdict(meta, self.res.task.chance_accuracy)
        # Training = 3 forward passes (forward + two gradients) per trained example.
        spent = 3.0 * (train_flops * (meta["examples_trained"] - retrain_examples)
                       + (pruned_flops or train_flops) * retrain_examples)
        return {
            "task": self.res.task.name,
            "variant": self.variant.name, "schedule": self.variant.schedule,
            "placement": self.variant.placement, "seed": self.seed,
            "truncation_ratio": self.variant.truncation_ratio,
            "converged": meta["ticket"]["converged"],
            "ticket_epoch": meta["ticket"]["epoch"],
            "stop_distance": cfg.search.stop_distance,
            "trigger_threshold": (cfg.search.stop_distance + cfg.search.trigger_margin
                                  if self.variant.schedule == "worm" else None),
            "pre_prune_accuracy": meta["pre_prune_accuracy"],
            "post_prune_accuracy": meta["post_prune_accuracy"],
            "post_prune_accuracy_before_recalibration":
                meta.get("post_prune_accuracy_before_recalibration"),
            "retrain_accuracy_after_one_epoch":
                retrain[0]["eval_accuracy"] if retrain else None,
            **judged,  # restore_epochs, diverged, diverged_reason, chance_accuracy
            "restore_target": {"kind": cfg.retrain.target_kind,
                               "value": cfg.retrain.target,
                               "accuracy": meta["target_accuracy"]},
            "pruning_mode": cfg.pruning.mode,
            "eval_split": cfg.data.eval_split,
            "times": times,
            "flops": {"dense_forward_per_example": flops,
                      "dense_train_forward_per_example": train_flops,
                      "training_flops_spent": spent,
                      "pruned_forward_per_example": pruned_flops},
            "structured": compact or None,
            "params": {"dense": self.res.num_params,
                       "pruned": meta["pruned_nonzero"]},
            "examples_trained": meta["examples_trained"],
            "trajectory": meta["records"],
        }


def run_variant(res: RunResources, variant: Variant, seed: int, workdir: str) -> dict:
    """Runs (or resumes) one variant from ``seed`` to its summary.

    The initial weights and the data order depend on ``seed`` only, so every
    variant of an experiment starts from the same initialisation.
    """
    run = _Run(res, variant, seed, workdir)
    try:
        variables = res.task.init_variables(seed)
        # Replicated on every device; restored checkpoints land the same way,
        # whatever device count wrote them.
        fresh_state = res.parallel.replicate(
            state_lib.create_train_state(variables, run.tx, seed))
        fresh_eb = res.parallel.replicate(run.search.init(res.layout.num_entries))
        state, eb, param_mask = run.restore_or_init(fresh_state, fresh_eb)
        if run.meta["phase"] == "search":
            state, eb = run.run_search(state, eb)
            state, param_mask = run.prune(state, eb)
        if run.meta["phase"] == "retrain":
            state = run.run_retrain(state, eb, param_mask)
            if run.compact_model is not None:
                run.save_compact_model(state)  # again on a re-run: same bytes
            run.meta["phase"] = "done"  # the last retraining checkpoint ends the run
        return run.summary()
    except divergence.NonFiniteError as err:
        raise divergence.with_checkpoint_note(err, run.ckpt, run.meta) from None
    finally:
        run.ckpt.close()
