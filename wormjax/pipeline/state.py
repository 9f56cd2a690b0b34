"""The training state threaded through the jitted steps, and the optimizer."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from wormjax import _validate
from wormjax import selectors as selectors_lib
from wormjax import sparsity as sparsity_lib
from wormjax import truncation as truncation_lib

__all__ = ["TrainState", "PLACEMENTS", "LR_SCHEDULES", "make_optimizer",
           "validate_optim_config", "learning_rate_schedule", "step_schedule",
           "weight_decay_mask", "create_train_state"]

PLACEMENTS = ("gradient", "update")


class TrainState(flax.struct.PyTreeNode):
    """Parameters, BatchNorm statistics, optimizer state, step and dropout key."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


OPTIMIZERS = ("sgd", "adamw")
# auto: today's choice per optimizer (sgd: constant; adamw: warmup_linear).
LR_SCHEDULES = ("auto", "constant", "step", "warmup_linear")
# Leaf names exempt from weight decay unless optim.decay_norm_and_bias: every
# layer's bias (BatchNorm's beta too) and every norm's scale (BatchNorm and
# LayerNorm gamma; flax names no other parameter "scale").
NO_DECAY_LEAVES = ("bias", "scale")


def parse_step_fractions(text) -> tuple[float, ...]:
    """``"0.5,0.75"`` -> (0.5, 0.75), checked strictly increasing inside (0, 1)."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        fractions = tuple(float(t) for t in items if str(t).strip())
    except ValueError:
        raise ValueError(f"optim.step_fractions must be comma-separated numbers in "
                         f"(0, 1), e.g. '0.5,0.75'; got {text!r}") from None
    if not fractions:
        raise ValueError("optim.step_fractions is empty; give at least one fraction "
                         "in (0, 1), e.g. '0.5,0.75'")
    for f in fractions:
        _validate.open_interval("optim.step_fractions entry", f, 0.0, 1.0)
    if any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"optim.step_fractions must be strictly increasing, got "
                         f"{text!r}")
    return fractions


def validate_optim_config(optim) -> None:
    """Checks the optimizer fields make_optimizer reads; ValueError names the field.

    Fields missing from ``optim`` (configs older than the recipe knobs) take
    their defaults, which reproduce the chain wormjax always built.
    """
    _validate.one_of("optim.name", optim.name, OPTIMIZERS)
    _validate.half_open_interval("optim.learning_rate", optim.learning_rate, 0.0, 10.0)
    _validate.closed_interval("optim.sparsity", optim.get("sparsity", 0.0), 0.0, 1.0)
    schedule = _validate.one_of("optim.schedule", optim.get("schedule", "auto"),
                                LR_SCHEDULES)
    if schedule == "step":
        parse_step_fractions(optim.get("step_fractions", "0.5,0.75"))
    _validate.half_open_interval("optim.step_factor", optim.get("step_factor", 0.1),
                                 0.0, 1.0)
    decay_all = optim.get("decay_norm_and_bias", False)
    if not isinstance(decay_all, bool):
        raise ValueError(f"optim.decay_norm_and_bias must be True or False, got "
                         f"{decay_all!r}")


def weight_decay_mask(params):
    """True for the leaves weight decay applies to: all but biases and norm scales.

    Decided by path, once: a leaf whose last path component is one of
    ``NO_DECAY_LEAVES`` is exempt (BatchNorm / LayerNorm scale and bias, dense
    and conv biases); kernels and embeddings decay.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: selectors_lib.path_str(path).rsplit("/", 1)[-1]
        not in NO_DECAY_LEAVES, params)


def step_schedule(learning_rate: float, fractions, factor: float,
                  total_steps: int) -> optax.Schedule:
    """``learning_rate * factor**k``, k = boundaries ``round(f * total_steps)`` <= step.

    The update with optimizer count ``b`` (0-based) is the first at the lower
    rate, as Early-Bird's epoch loop lowers the rate at the start of epoch 80
    of 160.
    """
    boundaries = jnp.asarray([int(round(f * total_steps)) for f in fractions],
                             jnp.int32)
    # Each rate rounded once from float64, not accumulated in float32.
    values = jnp.asarray([learning_rate * factor ** k
                          for k in range(len(fractions) + 1)], jnp.float32)

    def schedule(count):
        return values[jnp.sum(jnp.asarray(count) >= boundaries)]

    return schedule


def _warmup_linear(optim, lr: float, total_steps: int | None):
    warmup = int(optim.get("warmup_steps", 0) or 0)
    fraction = float(optim.get("warmup_fraction", 0.0) or 0.0)
    if fraction and total_steps:
        # BERT recipes give warm-up as a share of all steps, which depends
        # on the data size: resolved here, where total_steps is known.
        warmup = int(round(fraction * total_steps))
    if not total_steps:
        return lr
    # Warm-up then linear decay over the whole run, never reset per epoch.
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)),
         optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))],
        [max(warmup, 1)])


def learning_rate_schedule(optim, total_steps: int | None = None):
    """The learning rate of ``optim``: a float, or an optax schedule of the step.

    Args:
      optim: ``config.optim``; ``schedule`` is auto (sgd: constant, adamw:
        warmup_linear), constant, step (``step_fractions`` of ``total_steps``,
        each lowering the rate by ``step_factor``) or warmup_linear.
      total_steps: the steps the schedule spans; needed by ``step``.

    Returns:
      What ``optax.sgd`` / ``optax.adamw`` take as ``learning_rate``.
    """
    lr = float(optim.learning_rate)
    schedule = optim.get("schedule", "auto")
    if schedule == "auto":
        schedule = "constant" if optim.name == "sgd" else "warmup_linear"
    if schedule == "constant":
        return lr
    if schedule == "warmup_linear":
        return _warmup_linear(optim, lr, total_steps)
    if not total_steps:
        raise ValueError("optim.schedule='step' needs total_steps (the planned "
                         "steps its fractions refer to)")
    return step_schedule(lr, parse_step_fractions(optim.get("step_fractions", "0.5,0.75")),
                         float(optim.get("step_factor", 0.1)), int(total_steps))


def make_optimizer(optim, selector: selectors_lib.ParamSelector, *,
                   total_steps: int | None = None, placement: str = "gradient",
                   with_truncation: bool = True) -> optax.GradientTransformationExtraArgs:
    """The optax chain of a run, with WORM truncation where ``placement`` says.

    Args:
      optim: the ``config.optim`` ConfigDict (name, learning_rate, momentum,
        weight_decay, decay_norm_and_bias, schedule and its step_fractions /
        step_factor / warmup_steps / warmup_fraction, sparsity, grad_clip_norm).
      selector: the representative parameters the truncation and the sparsity
        penalty act on.
      total_steps: the planned steps of the run, which the warm-up/linear decay
        and the step schedule span. The experiment passes (search.max_epochs +
        retrain.max_epochs) x steps per epoch; each phase starts a fresh
        optimizer, so retraining restarts the schedule.
      placement: "gradient" (first in the chain: the raw gradient, the paper)
        or "update" (last: the final update, which Adam cannot undo).
      with_truncation: False leaves the WORM transform out and everything else as
        it is (the benchmarks' bare arm, for the transform's own cost).

    Returns:
      A transformation whose ``update`` takes ``truncation=`` extra args. With
      ``optim.sparsity > 0`` the network-slimming penalty comes first of all, so
      it is part of the gradient the truncation, clipping, weight decay and
      momentum see; with 0 it is left out and the chain is what it always was.
    """
    _validate.one_of("truncation placement", placement, PLACEMENTS)
    validate_optim_config(optim)
    name = optim.name
    schedule = learning_rate_schedule(optim, total_steps)
    clip = float(optim.get("grad_clip_norm", 0.0) or 0.0)
    # Only masked when it changes something, so configs without decay keep their
    # optimizer-state tree (and checkpoints) as before.
    mask = None
    if optim.weight_decay and not optim.get("decay_norm_and_bias", False):
        mask = weight_decay_mask
    parts = []
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if name == "sgd":
        core = optax.sgd(schedule, momentum=optim.momentum or None)
        if optim.weight_decay:
            core = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask),
                               core)
    else:
        core = optax.adamw(schedule, weight_decay=optim.weight_decay, mask=mask)
    trunc = [truncation_lib.worm_truncation(selector)] if with_truncation else []
    penalty = []
    if float(optim.get("sparsity", 0.0) or 0.0) > 0:
        penalty.append(sparsity_lib.sparsity_penalty(selector, float(optim.sparsity)))
    if placement == "gradient":
        return optax.chain(*penalty, *trunc, *parts, core)
    return optax.chain(*penalty, *parts, core, *trunc)


def create_train_state(variables, tx, seed: int) -> TrainState:
    """A fresh state (step 0, fresh optimizer) around ``variables``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        # A raw uint32 key (not a typed key) so orbax saves it as an array.
        rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
    )
