"""WORM gradient truncation as an optax ``GradientTransformation``.

``worm_truncation(selector)`` multiplies the updates of pruned representative
entries (and their companions, the BatchNorm biases) by ``r`` while truncation
is active, and passes every other leaf through untouched. Placed first in a
chain it scales the raw gradient (the paper); placed last it scales the final
update, which survives adaptive optimizers such as Adam::

    tx = optax.chain(wormjax.worm_truncation(wormjax.batchnorm_selector()),
                     optax.sgd(0.01, momentum=0.9))
    updates, opt_state = tx.update(grads, opt_state, params, eb_state=eb_state)

The mask, ``r`` and the active flag are runtime values: either passed at
update time (``eb_state=`` or ``truncation=``), or stored in the
transformation's state with :func:`set_truncation` for code that cannot pass
extra arguments (``flax.training.train_state.TrainState.apply_gradients``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wormjax import selectors as selectors_lib
from wormjax.search import EarlyBirdState

__all__ = [
    "WormTruncationState",
    "truncation_from_eb_state",
    "set_truncation",
    "truncation_multipliers",
    "worm_truncation",
]


class WormTruncationState(NamedTuple):
    """The truncation in force: flat keep mask, multiplier, on/off."""

    keep: jax.Array  # bool [N], True = kept (never truncated)
    ratio: jax.Array  # float32 scalar r
    active: jax.Array  # bool scalar


def truncation_from_eb_state(eb_state: EarlyBirdState) -> WormTruncationState:
    """The truncation an Early-Bird state asks for: its newest mask, r, flag."""
    return WormTruncationState(
        keep=eb_state.newest_mask,
        ratio=jnp.asarray(eb_state.ratio, jnp.float32),
        active=jnp.asarray(eb_state.active, jnp.bool_),
    )


def truncation_multipliers(layout: selectors_lib.TicketLayout, tree,
                           truncation: WormTruncationState):
    """The mask-derived multiplier pytree: ``r`` on pruned entries, else 1.

    Leaves outside the layout get a scalar 1 of their dtype; every multiplier
    has its leaf's dtype, so bf16 stays bf16.
    """
    effective_r = jnp.where(truncation.active, truncation.ratio, 1.0)

    def mult(leaf, keep):
        dtype = jnp.result_type(leaf)
        return jnp.where(keep, jnp.ones((), dtype), effective_r.astype(dtype))

    return layout.map_masked(
        tree, truncation.keep, mult,
        untouched=lambda leaf: jnp.ones((), jnp.result_type(leaf)))


def _truncate(layout, updates, truncation: WormTruncationState):
    effective_r = jnp.where(truncation.active, truncation.ratio, 1.0)

    def scale(leaf, keep):
        r = effective_r.astype(leaf.dtype)
        return jnp.where(keep, leaf, leaf * r)

    return layout.map_masked(updates, truncation.keep, scale)


def set_truncation(opt_state, truncation) -> Any:
    """Stores a truncation in every ``WormTruncationState`` inside ``opt_state``.

    Args:
      opt_state: any optimizer state holding one or more worm_truncation states
        (inside ``optax.chain``, ``optax.MultiSteps``, ``inject_hyperparams``).
      truncation: a :class:`WormTruncationState` or an ``EarlyBirdState``.

    Returns:
      ``opt_state`` with those sub-states replaced; jit-safe, no retracing.
    """
    if isinstance(truncation, EarlyBirdState):
        truncation = truncation_from_eb_state(truncation)
    found = []

    def replace(node):
        if isinstance(node, WormTruncationState):
            found.append(True)
            if node.keep.shape != truncation.keep.shape:
                raise ValueError(
                    f"truncation mask has shape {truncation.keep.shape}; the "
                    f"optimizer state expects {node.keep.shape}")
            return WormTruncationState(
                keep=jnp.asarray(truncation.keep, jnp.bool_),
                ratio=jnp.asarray(truncation.ratio, jnp.float32),
                active=jnp.asarray(truncation.active, jnp.bool_))
        return node

    new_state = jax.tree_util.tree_map(
        replace, opt_state, is_leaf=lambda x: isinstance(x, WormTruncationState))
    if not found:
        raise ValueError("opt_state holds no worm_truncation state to set")
    return new_state


def worm_truncation(
    selector: selectors_lib.ParamSelector | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates of pruned representative entries by ``r``.

    Args:
      selector: picks the representative leaves (and their companions) by path;
        defaults to :func:`wormjax.batchnorm_selector` (scales and biases,
        found by name on bare params). For your own model pass
        ``batchnorm_selector().bind(variables)``: bound, it finds every
        BatchNorm by structure and reads the gradient trees of linen and of
        ``nnx.Optimizer`` alike (``optimizer.update(model, grads,
        eb_state=...)`` forwards the keyword).

    Returns:
      An optax ``GradientTransformationExtraArgs``. Its ``update`` accepts
      ``eb_state=`` (an ``EarlyBirdState``) or ``truncation=`` (a
      ``WormTruncationState``) as keyword arguments; the one given is used and
      remembered in the state, otherwise the stored one applies. It is the
      identity while truncation is inactive or ``r == 1``. Unknown extra
      arguments are ignored.
    """
    if selector is None:
        selector = selectors_lib.batchnorm_selector()
    if not callable(selector):
        raise ValueError(f"selector must be a ParamSelector, got {selector!r}")

    def init_fn(params):
        layout = selector(params)
        return WormTruncationState(
            keep=jnp.ones((layout.num_entries,), jnp.bool_),
            ratio=jnp.ones((), jnp.float32),
            active=jnp.zeros((), jnp.bool_),
        )

    def update_fn(updates, state, params=None, *, eb_state=None, truncation=None,
                  **extra_args):
        del params, extra_args
        if eb_state is not None and truncation is not None:
            raise ValueError("pass either eb_state= or truncation=, not both")
        if eb_state is not None:
            truncation = truncation_from_eb_state(eb_state)
        if truncation is None:
            truncation = state
        else:
            truncation = WormTruncationState(
                keep=jnp.asarray(truncation.keep, jnp.bool_),
                ratio=jnp.asarray(truncation.ratio, jnp.float32),
                active=jnp.asarray(truncation.active, jnp.bool_))
        # The layout depends on paths and shapes only: resolved at trace time.
        layout = selector(updates)
        if truncation.keep.shape != (layout.num_entries,):
            raise ValueError(
                f"truncation mask has {truncation.keep.shape} entries; the "
                f"selected parameters have ({layout.num_entries},)")
        return _truncate(layout, updates, truncation), truncation

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
