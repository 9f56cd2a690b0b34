"""Several Early-Bird detectors over one training: one prune ratio each.

The Early-Bird code runs three detectors at once (p = 0.3, 0.5, 0.7) over the
same training, each with its own mask window, each stopping on its own. Here
their states are stacked along a leading ratio axis, so the epoch-end update
of every ratio is one compiled program::

    search = wormjax.early_bird_multi(
        wormjax.EarlyBirdConfig(schedule="none"), prune_ratios=(0.3, 0.5, 0.7))
    eb_states = search.init(layout.num_entries)
    for epoch in range(max_search_epochs):
        eb_states = search.update(eb_states, layout.representative(params))
        if bool(wormjax.multi_all_converged(eb_states)): break
        ...train one epoch...
    ticket_05 = wormjax.multi_ratio_state(eb_states, 1).newest_mask

A detector that has stopped is frozen: later updates leave its window,
distances and ticket epoch as they were, so each ratio's state equals what a
search of that ratio alone would hold when it stopped, and its
``newest_mask`` is its ticket.

Truncation (schedules worm, always, greedy) can follow only one mask in one
training, so it follows a named *primary* ratio; a config with several ratios,
a truncating schedule and no primary is ambiguous and refused. Once the
primary has stopped, truncation is off: its ticket is fixed, and the other
detectors watch ordinary training from then on.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from wormjax import _validate
from wormjax import masks
from wormjax import search as search_lib
from wormjax import truncation as truncation_lib

__all__ = [
    "MultiRatioConfig",
    "MultiRatioSearch",
    "early_bird_multi",
    "multi_ratio_state",
    "multi_all_converged",
]


@dataclasses.dataclass(frozen=True)
class MultiRatioConfig:
    """Static settings of a multi-ratio search; validated on construction.

    Attributes:
      search: the shared settings (window, s, delta, r, schedule); its own
        ``prune_ratio`` is ignored.
      prune_ratios: the detectors' ratios, each in (0, 1), distinct, in the
        order their states are stacked.
      primary_ratio: the ratio whose mask and trigger drive truncation; one of
        ``prune_ratios``. Required when the schedule truncates and there is
        more than one ratio; with one ratio it defaults to that ratio.
    """

    search: search_lib.EarlyBirdConfig
    prune_ratios: tuple[float, ...]
    primary_ratio: float | None = None

    def __post_init__(self):
        ratios = tuple(float(_validate.open_interval("prune_ratios entry", p, 0.0, 1.0))
                       for p in self.prune_ratios)
        if not ratios:
            raise ValueError("prune_ratios must hold at least one ratio, got ()")
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"prune_ratios must be distinct, got {ratios}")
        object.__setattr__(self, "prune_ratios", ratios)
        primary = self.primary_ratio
        if primary is None and (len(ratios) == 1 or self.search.schedule == "none"):
            primary = ratios[0]
        if primary is None:
            raise ValueError(
                f"schedule {self.search.schedule!r} truncates with one mask, and "
                f"prune_ratios {ratios} give {len(ratios)}: name the one that drives "
                "truncation with primary_ratio (e.g. search.primary_ratio)")
        if float(primary) not in ratios:
            raise ValueError(
                f"primary_ratio {primary!r} is not one of prune_ratios {ratios}")
        object.__setattr__(self, "primary_ratio", float(primary))

    @property
    def primary_index(self) -> int:
        """Position of the primary ratio on the stacked axis."""
        return self.prune_ratios.index(self.primary_ratio)

    def ratio_config(self, index: int) -> search_lib.EarlyBirdConfig:
        """The single-ratio search config of detector ``index``."""
        return dataclasses.replace(self.search, prune_ratio=self.prune_ratios[index])


def multi_ratio_state(states: search_lib.EarlyBirdState, index: int
                      ) -> search_lib.EarlyBirdState:
    """Detector ``index``'s own state out of the stacked states."""
    return jax.tree_util.tree_map(lambda x: x[index], states)


def multi_all_converged(states: search_lib.EarlyBirdState) -> jax.Array:
    """True once every detector has stopped."""
    return jnp.all(states.converged)


def init(num_entries: int, config: MultiRatioConfig) -> search_lib.EarlyBirdState:
    """Empty stacked states, one per ratio (leading axis = ``prune_ratios``)."""
    one = search_lib.init(num_entries, config.search)
    return jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(x, (len(config.prune_ratios),) + x.shape), one)


def update(states: search_lib.EarlyBirdState, representative,
           config: MultiRatioConfig) -> search_lib.EarlyBirdState:
    """One search epoch for every detector; stopped detectors stay frozen.

    Args:
      states: the stacked states before this epoch.
      representative: the representative leaves, as for ``search.update``.
      config: the static multi-ratio settings.

    Returns:
      The stacked states after this epoch.
    """
    mags = masks.flat_magnitudes(representative)
    if mags.shape[0] != states.masks.shape[-1]:
        raise ValueError(
            f"representative parameters have {mags.shape[0]} entries; these search "
            f"states were initialised for {states.masks.shape[-1]}")
    # The magnitudes are gathered once; each ratio only needs its own threshold.
    new_masks = jnp.stack([masks.flat_magnitude_mask(mags, p)
                           for p in config.prune_ratios])
    # update_with_mask never reads prune_ratio, so one config serves every row.
    stepped = jax.vmap(lambda s, m: search_lib.update_with_mask(s, m, config.search)
                       )(states, new_masks)

    def freeze(old, new):
        stopped = states.converged.reshape((-1,) + (1,) * (old.ndim - 1))
        return jnp.where(stopped, old, new)

    return jax.tree_util.tree_map(freeze, states, stepped)


def truncation(states: search_lib.EarlyBirdState, config: MultiRatioConfig
               ) -> truncation_lib.WormTruncationState:
    """The truncation the primary detector asks for; off once it has stopped."""
    primary = multi_ratio_state(states, config.primary_index)
    out = truncation_lib.truncation_from_eb_state(primary)
    return out._replace(active=out.active & ~primary.converged)


class MultiRatioSearch(NamedTuple):
    """``init``/``update``/``truncation`` bound to one config."""

    init: Callable[[int], search_lib.EarlyBirdState]
    update: Callable[..., search_lib.EarlyBirdState]
    truncation: Callable[[search_lib.EarlyBirdState],
                         truncation_lib.WormTruncationState]
    config: MultiRatioConfig


def early_bird_multi(config: search_lib.EarlyBirdConfig | None = None, *,
                     prune_ratios: Sequence[float], primary_ratio: float | None = None,
                     **kwargs) -> MultiRatioSearch:
    """Binds shared settings and several prune ratios to jitted init/update.

    Args:
      config: the shared search settings (its ``prune_ratio`` is ignored);
        ``None`` builds one from ``kwargs``.
      prune_ratios: one detector per ratio (the Early-Bird code: 0.3, 0.5, 0.7).
      primary_ratio: the ratio whose mask and trigger drive truncation.
      **kwargs: ``EarlyBirdConfig`` fields, replacing those of ``config``.

    Returns:
      A ``MultiRatioSearch``; ``update`` compiles once per representative
      shape for every ratio together.
    """
    if config is None:
        config = search_lib.EarlyBirdConfig(**kwargs)
    elif kwargs:
        config = dataclasses.replace(config, **kwargs)
    multi = MultiRatioConfig(config, tuple(prune_ratios), primary_ratio)
    return MultiRatioSearch(
        init=lambda num_entries: init(num_entries, multi),
        update=jax.jit(lambda states, rep: update(states, rep, multi)),
        truncation=jax.jit(lambda states: truncation(states, multi)),
        config=multi,
    )
