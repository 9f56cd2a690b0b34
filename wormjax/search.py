"""The Early-Bird search state: a mask window, its distances and the WORM trigger.

Pure functions over a fixed-shape pytree, so the epoch-end update compiles
once and is threaded through a training loop like an optimizer state::

    search = wormjax.early_bird(wormjax.EarlyBirdConfig(schedule="worm"))
    eb_state = search.init(layout.num_entries)
    for epoch in range(max_search_epochs):
        eb_state = search.update(eb_state, layout.representative(params))
        if eb_state.converged: break
        ...train one epoch, truncating with eb_state...

The rules are docs/algorithm.md sections 2 and 3.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from wormjax import _validate
from wormjax import masks

__all__ = [
    "SCHEDULES",
    "EarlyBirdConfig",
    "EarlyBirdState",
    "EarlyBirdSearch",
    "early_bird",
    "init",
    "update",
]

SCHEDULES = ("none", "worm", "always", "greedy")

# Counts of differing entries are summed in int32 inside jit.
_MAX_COUNT_SUM = 2**31 - 1


def _decimal(value) -> fractions.Fraction:
    """``value`` as the decimal it is written as: 0.1 is 1/10, not the double."""
    return fractions.Fraction(str(value))


@dataclasses.dataclass(frozen=True)
class EarlyBirdConfig:
    """Static settings of the search; validated on construction.

    Attributes:
      prune_ratio: p, the fraction of representative entries pruned, in (0, 1).
      window: l, how many masks the FIFO window holds (5 CNN, 3 BERT), >= 2.
      stop_distance: s; the ticket is found when every distance <= s.
      trigger_margin: delta; WORM truncation starts once d_avg < s + delta.
      truncation_ratio: r, the gradient multiplier of pruned entries, in [0, 1].
      schedule: "none" (EB Train, r = 1), "worm" (the trigger above),
        "always" (r from epoch 0), "greedy" (r = d_avg, updated every epoch).
    """

    prune_ratio: float = 0.5
    window: int = 5
    stop_distance: float = 0.1
    trigger_margin: float = 0.05
    truncation_ratio: float = 3e-3
    schedule: str = "worm"

    def __post_init__(self):
        _validate.open_interval("prune_ratio", self.prune_ratio, 0.0, 1.0)
        _validate.at_least("window", self.window, 2)
        _validate.half_open_interval("stop_distance", self.stop_distance, 0.0, 1.0)
        _validate.closed_interval("trigger_margin", self.trigger_margin, 0.0, 1.0)
        _validate.closed_interval(
            "truncation_ratio", self.truncation_ratio, 0.0, 1.0)
        _validate.one_of("schedule", self.schedule, SCHEDULES)

    @property
    def trigger_threshold(self) -> float:
        """s + delta: WORM truncation starts when d_avg falls strictly below it."""
        return self.stop_distance + self.trigger_margin

    def max_stop_count(self, num_entries: int) -> int:
        """The most differing entries per older mask that still stop the search.

        ``d <= s`` with ``d = count / N`` is ``count <= floor(s * N)``, computed
        exactly from the decimal ``s``, so a distance equal to ``s`` stops the
        search however float32 would round ``count / N``.
        """
        return math.floor(_decimal(self.stop_distance) * num_entries)

    def max_trigger_count(self, num_entries: int) -> int:
        """The largest summed count over the older masks that triggers WORM.

        ``d_avg < s + delta`` with ``d_avg = sum(counts) / ((l - 1) * N)`` is
        ``sum(counts) < (s + delta) * (l - 1) * N``; the sum is an integer, so it
        is ``sum(counts) <= ceil(bound) - 1``, exact from the decimal s and delta.
        Capped at ``(l - 1) * N``, the largest sum there is.
        """
        pairs = (self.window - 1) * num_entries
        bound = (_decimal(self.stop_distance) + _decimal(self.trigger_margin)) * pairs
        return min(math.ceil(bound) - 1, pairs)


class EarlyBirdState(NamedTuple):
    """Everything the search carries between epochs; fixed shapes, no Python.

    Attributes:
      masks: bool [window, N], oldest first; ``masks[-1]`` is the newest mask.
      num_pushed: int32, masks pushed so far (the window is full at >= window).
      dists: float32 [window - 1], newest vs each older mask (1.0 until full);
        ``counts / N``, for reporting: the rules decide on ``counts``.
      d_max: float32, max of ``dists``.
      d_avg: float32, mean of ``dists``.
      converged: bool, the stop rule held at some update (sticky).
      ticket_epoch: int32, the search epoch at which it held (-1 before).
      active: bool, truncation is applied during the next training epoch.
      ratio: float32, the multiplier r for pruned entries while active.
      epoch: int32, updates done so far (= index of the next search epoch).
      counts: int32 [window - 1], entries on which the newest mask differs from
        each older one (N until the window is full); the stop rule and the
        trigger compare these with exact integer bounds.
      nonfinite: bool, some update saw a NaN or infinite representative
        magnitude (sticky); such a search never converges nor triggers.
    """

    masks: jax.Array
    num_pushed: jax.Array
    dists: jax.Array
    d_max: jax.Array
    d_avg: jax.Array
    converged: jax.Array
    ticket_epoch: jax.Array
    active: jax.Array
    ratio: jax.Array
    epoch: jax.Array
    counts: jax.Array
    nonfinite: jax.Array

    @property
    def newest_mask(self) -> jax.Array:
        """The flat keep mask of the latest update (all True before any)."""
        return self.masks[-1]


def init(num_entries: int, config: EarlyBirdConfig) -> EarlyBirdState:
    """An empty search over ``num_entries`` representative entries."""
    _validate.at_least("num_entries", num_entries, 2)
    n_dists = config.window - 1
    if n_dists * num_entries > _MAX_COUNT_SUM:
        raise ValueError(
            f"(window - 1) * num_entries = {n_dists} * {num_entries} exceeds "
            f"{_MAX_COUNT_SUM}, the largest int32 sum of mask differences")
    return EarlyBirdState(
        # All-keep placeholders: before the first update a truncation that
        # reads newest_mask touches nothing.
        masks=jnp.ones((config.window, num_entries), jnp.bool_),
        num_pushed=jnp.zeros((), jnp.int32),
        dists=jnp.ones((n_dists,), jnp.float32),
        d_max=jnp.ones((), jnp.float32),
        d_avg=jnp.ones((), jnp.float32),
        converged=jnp.zeros((), jnp.bool_),
        ticket_epoch=jnp.full((), -1, jnp.int32),
        active=jnp.asarray(config.schedule in ("always", "greedy")),
        ratio=jnp.asarray(
            1.0 if config.schedule in ("none", "greedy") else config.truncation_ratio,
            jnp.float32),
        epoch=jnp.zeros((), jnp.int32),
        counts=jnp.full((n_dists,), num_entries, jnp.int32),
        nonfinite=jnp.zeros((), jnp.bool_),
    )


def update_with_mask(state: EarlyBirdState, new_mask: jax.Array,
                     config: EarlyBirdConfig, finite=True,
                     counted: jax.Array | None = None) -> EarlyBirdState:
    """One search epoch's bookkeeping given its flat keep mask (steps 1-3).

    Args:
      state: the search state before this epoch.
      new_mask: bool [N], the keep mask of this epoch.
      config: the static search settings.
      finite: bool scalar, whether the magnitudes behind ``new_mask`` were all
        finite; False marks the state ``nonfinite`` for good.
      counted: optional bool [N]; when given, only entries where it is True
        count as differences (the divisor stays N). None counts every entry,
        the paper's rule; ``wormjax.quirks`` uses it to reproduce a
        reference implementation's distances.

    Returns:
      The new state.
    """
    num_entries = new_mask.shape[0]
    window = jnp.concatenate([state.masks[1:], new_mask[None, :]], axis=0)
    num_pushed = state.num_pushed + 1
    full = num_pushed >= config.window
    # Newest against each older mask, not consecutive pairs.
    differs = window[:-1] != window[-1][None, :]
    if counted is not None:
        differs = differs & jnp.asarray(counted, jnp.bool_)[None, :]
    raw = jnp.sum(differs, axis=1, dtype=jnp.int32)
    counts = jnp.where(full, raw, jnp.full_like(raw, num_entries))
    # Float distances only report; float32 rounding of count / N must not move
    # a tie across s or s + delta, so the decisions below use the counts.
    dists = counts.astype(jnp.float32) / num_entries
    d_max = jnp.max(counts).astype(jnp.float32) / num_entries
    d_avg = (jnp.sum(counts).astype(jnp.float32)
             / ((config.window - 1) * num_entries))
    nonfinite = state.nonfinite | ~jnp.asarray(finite, jnp.bool_)

    stop_now = (full & (jnp.max(counts) <= config.max_stop_count(num_entries))
                & ~nonfinite & ~state.converged)
    converged = state.converged | stop_now
    ticket_epoch = jnp.where(stop_now, state.epoch, state.ticket_epoch)

    if config.schedule == "worm":
        # Checked only when the search goes on; once on it stays on.
        triggered = (~converged & ~nonfinite
                     & (jnp.sum(counts) <= config.max_trigger_count(num_entries)))
        active, ratio = state.active | triggered, state.ratio
    elif config.schedule == "greedy":
        active, ratio = state.active, d_avg.astype(jnp.float32)
    else:  # "none" and "always" keep their initial flags.
        active, ratio = state.active, state.ratio

    return EarlyBirdState(
        masks=window, num_pushed=num_pushed, dists=dists, d_max=d_max,
        d_avg=d_avg, converged=converged, ticket_epoch=ticket_epoch,
        active=active, ratio=ratio, epoch=state.epoch + 1, counts=counts,
        nonfinite=nonfinite,
    )


def update(state: EarlyBirdState, representative, config: EarlyBirdConfig,
           counted: jax.Array | None = None) -> EarlyBirdState:
    """Pushes the mask of the current representative parameters (one epoch).

    Args:
      state: the search state before this epoch.
      representative: the representative leaves (a list in layout order, or
        any pytree whose leaf order matches the one used for ``init``).
      config: the static search settings.
      counted: optional bool [N] of the entries whose differences count (see
        ``update_with_mask``); None, the default, counts all.

    Returns:
      The new state: window, distances, converged flag, ticket epoch, trigger.
      A NaN or infinite magnitude sets the sticky ``nonfinite`` flag (jit
      cannot raise): the caller should check it and stop.
    """
    mags = masks.flat_magnitudes(representative)
    if mags.shape[0] != state.masks.shape[1]:
        raise ValueError(
            f"representative parameters have {mags.shape[0]} entries; this search "
            f"state was initialised for {state.masks.shape[1]}"
        )
    return update_with_mask(
        state, masks.flat_magnitude_mask(mags, config.prune_ratio), config,
        finite=jnp.all(jnp.isfinite(mags)), counted=counted)


class EarlyBirdSearch(NamedTuple):
    """``init``/``update`` bound to one config, like an optax transformation."""

    init: Callable[[int], EarlyBirdState]
    update: Callable[..., EarlyBirdState]
    config: EarlyBirdConfig


def early_bird(config: EarlyBirdConfig | None = None, **kwargs) -> EarlyBirdSearch:
    """Binds a config (or its fields as keywords) to jit-compiled init/update.

    ``update`` is compiled once per representative shape; the mask, distances,
    trigger and r are traced values, so changing them never retraces it.

    Ties: the mask keeps ``|x| > sort(|x|)[floor(N * p)]`` (``wormjax.masks``),
    so entries equal to the threshold are pruned. A layer whose entries are all
    equal (zero- or constant-initialised BatchNorm scales) is therefore kept or
    pruned as a whole until training separates its entries:

    - a fresh network whose scales are all 1 gives an all-pruned first mask; it
      only fills the window, and later masks differ from it;
    - a layer initialised below the others (a residual block's zero-init last
      BatchNorm) sits at the bottom of the global ranking and can lose every
      channel, which silences that branch; in ``structured`` pruning the
      channel floor keeps at least one.

    ``batchnorm_selector`` warns, naming them, when it selects such layers.
    """
    if config is None:
        config = EarlyBirdConfig(**kwargs)
    elif kwargs:
        config = dataclasses.replace(config, **kwargs)
    return EarlyBirdSearch(
        init=lambda num_entries: init(num_entries, config),
        # ``counted`` is an array argument, not part of the config: changing
        # it never retraces.
        update=jax.jit(lambda state, rep, counted=None: update(state, rep, config,
                                                               counted),
                       donate_argnums=()),
        config=config,
    )
