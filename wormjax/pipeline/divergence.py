"""Divergence: non-finite values stop a run; an accuracy at chance flags it.

A diverging run can look like a success in two ways:

- **Non-finite values.** The parameters (or the BatchNorm scales the ticket is
  read from) become NaN or infinite while the loss is still finite, or just
  before it stops being finite. The masks then look settled and the search
  "converges". So after every training epoch the parameters are checked, and
  the epoch-end Early-Bird update is checked too. The run stops with a
  :class:`NonFiniteError` *before* that epoch's checkpoint is written, so every
  checkpoint holds finite values.
- **Collapse to chance.** With a huge learning rate the model may end up
  predicting a single class while every value stays finite. The masks settle,
  and a relative restore target (98% of a chance-level accuracy) is reached in
  one epoch. :func:`verdict` flags such a run in its summary as ``diverged``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHANCE_MARGIN", "NonFiniteError", "NonFiniteParamsError", "all_finite",
           "check_finite", "check_search_state", "with_checkpoint_note",
           "chance_accuracy", "at_chance", "verdict"]

# An accuracy within two points of the most frequent class counts as chance.
# A collapsed model scores at most that frequency, so it always falls inside
# the margin. Two points is less than any useful model gains over chance on the
# bundled digits (10 classes, 359 test examples: 7 examples) and on CIFAR-10.
CHANCE_MARGIN = 0.02


class NonFiniteError(RuntimeError):
    """Training produced NaN or infinite values; the run stopped."""


class NonFiniteParamsError(NonFiniteError):
    """The parameters (or representative magnitudes) became NaN or infinite."""


@jax.jit
def all_finite(tree) -> jax.Array:
    """One on-device reduction: True when every float entry of ``tree`` is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_finite(tree, where: str) -> None:
    """Raises NonFiniteParamsError unless every float entry of ``tree`` is finite.

    Reads one bool from the device: call it once per epoch, not per step.

    Args:
      tree: the parameters and BatchNorm statistics after a training epoch.
      where: the phase and epoch, for the message.
    """
    if not bool(all_finite(tree)):
        raise NonFiniteParamsError(
            f"parameters are NaN or infinite after {where} (the loss may still have "
            "been finite); the run stopped before this epoch's checkpoint. Lower the "
            "learning rate, check the weight decay, or check the data.")


def check_search_state(eb_state, search_epoch: int) -> None:
    """Raises NonFiniteParamsError when the Early-Bird update saw NaN or inf.

    Args:
      eb_state: the state just returned by the epoch-end update.
      search_epoch: the search epoch of that update.
    """
    if bool(eb_state.nonfinite):
        raise NonFiniteParamsError(
            f"the representative parameters (the ticket's BatchNorm scales or "
            f"attention kernels) are NaN or infinite at search epoch {search_epoch}; "
            "their mask is meaningless, so the search stopped. Lower the learning "
            "rate, check the weight decay, or check the initial weights.")


def with_checkpoint_note(err: NonFiniteError, checkpointer, meta: dict
                         ) -> NonFiniteError:
    """The same error, its message ending with what is on disk to resume from.

    Args:
      err: the error raised inside the run.
      checkpointer: the run's ``RunCheckpointer`` (its newest step and folder).
      meta: the run's metadata; until the failing epoch's checkpoint it equals
        the newest checkpoint's (phase, epoch).

    Returns:
      An error of the same type and traceback, whose message says truthfully
      whether a checkpoint exists.
    """
    step = checkpointer.latest_step()
    if step is None:
        note = "No checkpoint was written yet, so there is nothing to resume from."
    else:
        note = (f"The newest checkpoint is step {step} in {checkpointer.directory} "
                f"({meta.get('phase')}, before epoch {meta.get('epoch')}), written "
                "before the failing epoch; resuming it with the same config repeats "
                "the failure, so use a new --workdir with other settings.")
    return type(err)(f"{err} {note}").with_traceback(err.__traceback__)


def chance_accuracy(labels) -> float | None:
    """The accuracy of always predicting the most frequent class of ``labels``.

    Args:
      labels: int class ids of the evaluation set; negative ids (unknown) are
        ignored.

    Returns:
      The largest class frequency (at least 1 / number of classes present), or
      None when no label is known.
    """
    labels = np.asarray(labels).reshape(-1)
    labels = labels[labels >= 0]
    if not labels.size:
        return None
    return float(np.bincount(labels).max() / labels.size)


def at_chance(accuracy: float | None, chance: float) -> bool:
    """True when ``accuracy`` is known and at most ``chance + CHANCE_MARGIN``."""
    return accuracy is not None and accuracy <= chance + CHANCE_MARGIN


def verdict(meta: dict, chance: float | None) -> dict:
    """Whether a finished run diverged, and whether its restore counts.

    A run is diverged when its accuracy is at most ``chance + CHANCE_MARGIN``
    where it should not be:

    - the trained (pre-prune) accuracy is at chance: the search trained nothing;
    - retraining ends at chance after the accuracy was above chance, either
      right after pruning or at an earlier retraining epoch: retraining
      collapsed. A retraining that starts at chance (pruning is expected to drop
      the accuracy) and has not risen yet has only not restored, which
      ``restore_epochs`` already reports.

    When a diverged run reaches a restore target that is itself at chance (a
    relative target computed from a chance-level pre-prune accuracy), nothing
    was restored, and ``restore_epochs`` is reported as None.

    Args:
      meta: the run's metadata: ``pre_prune_accuracy``, ``post_prune_accuracy``,
        ``target_accuracy``, ``restore_epochs`` and the epoch ``records``.
      chance: :func:`chance_accuracy` of the evaluation set (None: not judged).

    Returns:
      ``{"restore_epochs", "diverged", "diverged_reason", "chance_accuracy"}``.
    """
    restore_epochs, target = meta.get("restore_epochs"), meta.get("target_accuracy")
    out = {"restore_epochs": restore_epochs, "diverged": False,
           "diverged_reason": None, "chance_accuracy": chance}
    if chance is None:
        return out
    retrain = [r.get("eval_accuracy") for r in meta.get("records", ())
               if r.get("phase") == "retrain"]
    reasons = []
    if at_chance(meta.get("pre_prune_accuracy"), chance):
        reasons.append(f"the pre-prune accuracy {meta['pre_prune_accuracy']:.4f}")
    earlier = [meta.get("post_prune_accuracy")] + retrain[:-1]
    if retrain and at_chance(retrain[-1], chance) and any(
            a is not None and not at_chance(a, chance) for a in earlier):
        reasons.append(f"the retrained accuracy {retrain[-1]:.4f}, down from "
                       f"{max(a for a in earlier if a is not None):.4f}")
    if not reasons:
        return out
    reason = (" and ".join(reasons) + f" {'is' if len(reasons) == 1 else 'are'} at or "
              f"below chance + {CHANCE_MARGIN} (chance {chance:.4f}: always predicting "
              "the most frequent class)")
    if restore_epochs is not None and at_chance(target, chance):
        reason += (f"; the restore target {target:.4f} is at chance, so reaching it "
                   "restores nothing: restore_epochs is not counted")
        out["restore_epochs"] = None
    out.update(diverged=True, diverged_reason=reason)
    return out
