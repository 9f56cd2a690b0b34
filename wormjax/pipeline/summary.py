"""What a run reports: its per-epoch records, its summary and its FLOP accounting."""

from __future__ import annotations

from wormjax.pipeline import divergence
from wormjax.pipeline.progress import Progress
from wormjax.pipeline.variants import Variant

__all__ = ["epoch_record", "bar_label", "restore_target",
           "training_flops", "run_summary"]


def epoch_record(variant: Variant, seed: int, phase: str, epoch: int, eb=None,
                 train=None, evaluation=None, seconds=0.0, steps=0,
                 truncation=None, ratios=None) -> dict:
    """One line of ``metrics.jsonl`` and of the summary's trajectory.

    "ratio" is the multiplier in effect: 1.0 while truncation is off, whatever
    r the search holds for later. "eval_f1" only where ``evaluation`` kept one.
    ``ratios`` (a multi-ratio search) is every detector's distances, listed as
    "prune_ratios"; the top-level distances are then the primary ratio's.
    """
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
    if ratios is not None:
        rec["prune_ratios"] = ratios
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


def bar_label(variant: Variant, seed: int, phase: str, epoch: int, eb) -> str:
    """The progress bar's description of an epoch."""
    label = f"{variant.name} s{seed} {phase} {epoch}"
    if eb is not None:  # already on the host for the epoch record
        label += (f" d_max {float(eb.d_max):.3f} d_avg {float(eb.d_avg):.3f}"
                  f"{' trunc' if bool(eb.active) else ''}")
    return label


def restore_target(retrain_cfg, pre_prune_accuracy: float) -> float:
    """The accuracy retraining must reach: absolute, or relative to pre-prune."""
    if retrain_cfg.target_kind == "absolute":
        return float(retrain_cfg.target)
    return float(retrain_cfg.target) * float(pre_prune_accuracy)


def training_flops(progress: Progress, train_flops: float,
                   pruned_flops: float | None) -> float:
    """FLOPs spent training: 3 forward passes (forward + two gradients) per example."""
    retrain = progress.examples_retrain
    return 3.0 * (train_flops * (progress.examples_trained - retrain)
                  + (pruned_flops or train_flops) * retrain)


def run_summary(progress: Progress, *, task, config, variant: Variant, seed: int,
                costs) -> dict:
    """A finished run's ``summary.json``.

    Args:
      costs: the experiment's ``programs.Costs`` (dense FLOPs and parameters).
    """
    retrain = progress.phase_records("retrain")
    times = dict(progress.times)
    times["total"] = times["search"] + times["prune"] + times["retrain"]
    flops = costs.flops_per_example
    train_flops = costs.train_flops_per_example or flops
    compact = progress.structured or {}
    pruned_flops = compact.get("forward_flops_compact")
    srch = config.search
    return {
        "task": task.name,
        "variant": variant.name, "schedule": variant.schedule,
        "placement": variant.placement, "seed": seed,
        "truncation_ratio": variant.truncation_ratio,
        "prune_ratio": (srch.prune_ratio if variant.prune_ratio is None
                        else variant.prune_ratio),
        "converged": progress.ticket["converged"],
        "ticket_epoch": progress.ticket["epoch"],
        "stop_distance": srch.stop_distance,
        "trigger_threshold": (srch.stop_distance + srch.trigger_margin
                              if variant.schedule == "worm" else None),
        "pre_prune_accuracy": progress.pre_prune_accuracy,
        "post_prune_accuracy": progress.post_prune_accuracy,
        "post_prune_accuracy_before_recalibration":
            progress.post_prune_accuracy_before_recalibration,
        "retrain_accuracy_after_one_epoch":
            retrain[0]["eval_accuracy"] if retrain else None,
        # Two-class tasks only (None elsewhere): GLUE reports F1 for MRPC.
        "pre_prune_f1": progress.pre_prune_f1,
        "post_prune_f1": progress.post_prune_f1,
        "retrain_f1_after_one_epoch": retrain[0].get("eval_f1") if retrain else None,
        # restore_epochs, diverged, diverged_reason, chance_accuracy
        **divergence.verdict(progress.to_json(), task.chance_accuracy),
        "restore_target": {"kind": config.retrain.target_kind,
                           "value": config.retrain.target,
                           "accuracy": progress.target_accuracy},
        "pruning_mode": config.pruning.mode,
        "eval_split": config.data.eval_split,
        "times": times,
        "flops": {"dense_forward_per_example": flops,
                  "dense_train_forward_per_example": train_flops,
                  "training_flops_spent": training_flops(progress, train_flops,
                                                         pruned_flops),
                  "pruned_forward_per_example": pruned_flops},
        "structured": compact or None,
        "params": {"dense": costs.num_params, "pruned": progress.pruned_nonzero},
        "examples_trained": progress.examples_trained,
        "trajectory": list(progress.records),
    }
