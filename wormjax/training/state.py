"""The training state threaded through the jitted steps, and the optimizer."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from wormjax import _validate
from wormjax import selectors as selectors_lib
from wormjax import truncation as truncation_lib

__all__ = ["TrainState", "PLACEMENTS", "make_optimizer", "create_train_state"]

PLACEMENTS = ("gradient", "update")


class TrainState(flax.struct.PyTreeNode):
    """Parameters, BatchNorm statistics, optimizer state, step and dropout key."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def make_optimizer(optim, selector: selectors_lib.ParamSelector, *,
                   total_steps: int | None = None, placement: str = "gradient"
                   ) -> optax.GradientTransformationExtraArgs:
    """The optax chain of a run, with WORM truncation where ``placement`` says.

    Args:
      optim: the ``config.optim`` ConfigDict (name, learning_rate, momentum,
        weight_decay, warmup_steps or warmup_fraction, grad_clip_norm).
      selector: the representative parameters the truncation acts on.
      total_steps: steps of the whole run, for the linear decay of AdamW.
      placement: "gradient" (first in the chain: the raw gradient, the paper)
        or "update" (last: the final update, which Adam cannot undo).

    Returns:
      A transformation whose ``update`` takes ``truncation=`` extra args.
    """
    _validate.one_of("truncation placement", placement, PLACEMENTS)
    name = _validate.one_of("optim.name", optim.name, ("sgd", "adamw"))
    lr = _validate.half_open_interval("optim.learning_rate", optim.learning_rate,
                                      0.0, 10.0)
    clip = float(optim.get("grad_clip_norm", 0.0) or 0.0)
    parts = []
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if name == "sgd":
        core = optax.sgd(lr, momentum=optim.momentum or None)
        if optim.weight_decay:
            core = optax.chain(optax.add_decayed_weights(optim.weight_decay), core)
    else:
        warmup = int(optim.get("warmup_steps", 0) or 0)
        fraction = float(optim.get("warmup_fraction", 0.0) or 0.0)
        if fraction and total_steps:
            # BERT recipes give warm-up as a share of all steps, which depends
            # on the data size: resolved here, where total_steps is known.
            warmup = int(round(fraction * total_steps))
        if total_steps:
            # Warm-up then linear decay over the whole run, never reset per epoch.
            schedule = optax.join_schedules(
                [optax.linear_schedule(0.0, lr, max(warmup, 1)),
                 optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))],
                [max(warmup, 1)])
        else:
            schedule = lr
        core = optax.adamw(schedule, weight_decay=optim.weight_decay)
    trunc = truncation_lib.worm_truncation(selector)
    if placement == "gradient":
        return optax.chain(trunc, *parts, core)
    return optax.chain(*parts, core, trunc)


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
