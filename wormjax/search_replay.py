"""The Early-Bird rule replayed over recorded magnitudes: which settings trigger WORM.

A WORM run and an EB Train run from the same initialisation and data order
are the same training until WORM's trigger fires: truncation is the only
difference, and it is off until then. So one EB Train run's sequence of
representative magnitudes (one vector per search update) decides, for every
setting of ``prune_ratio``, ``window``, ``stop_distance`` and
``trigger_margin`` at once, whether the WORM trigger fires before the stop
rule, and at which update; after a trigger only EB's own stop epoch is known.

``replay`` runs the library's own update (``search.update_with_mask``) over
the sequence, so the answer is the rule's, not a re-implementation's::

    trace = wormjax.replay(magnitudes, wormjax.EarlyBirdConfig(
        prune_ratio=0.5, window=3, stop_distance=0.01, trigger_margin=0.005))
    trace.stop_update, trace.trigger_update   # -1 where it never happens

The pipeline records the magnitudes with ``search.record_magnitudes=True``
(``<run>/search_magnitudes/``); ``python -m wormjax.study.scan RUN_DIR`` scans
a grid of settings over them.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wormjax import masks
from wormjax import search as search_lib

__all__ = ["ReplayTrace", "replay"]


class ReplayTrace(NamedTuple):
    """The search's answer after each recorded update (arrays of length T).

    Attributes:
      d_max, d_avg: float32 [T], the distances after each update (1.0 until
        the window is full).
      converged: bool [T], the stop rule has held at or before the update.
      triggered: bool [T], the WORM trigger has fired at or before the update
        (schedule ``worm``'s rule, whatever ``config.schedule`` says).
      stop_update: the first update at which the stop rule held; -1: never.
      trigger_update: the first update at which the trigger fired; -1: never.
        The trigger is checked only while the search goes on, so it is never
        later than ``stop_update`` when both are set.
    """

    d_max: np.ndarray
    d_avg: np.ndarray
    converged: np.ndarray
    triggered: np.ndarray
    stop_update: int
    trigger_update: int


def _first(flags: np.ndarray) -> int:
    hits = np.flatnonzero(flags)
    return int(hits[0]) if hits.size else -1


def replay(magnitudes, config: search_lib.EarlyBirdConfig,
           counted=None) -> ReplayTrace:
    """Replays the Early-Bird search over recorded representative magnitudes.

    Args:
      magnitudes: float [T, N], one flat magnitude vector per search update
        (``masks.flat_magnitudes`` of the representative leaves), oldest first.
      config: the search settings to replay; its schedule is replaced by
        ``worm`` so that the trigger is computed.
      counted: optional bool [N] of the entries whose differences count
        (``wormjax.quirks.authors_qk_counted``); None counts all.

    Returns:
      A ``ReplayTrace`` on the host.
    """
    mags = jnp.asarray(magnitudes, jnp.float32)
    if mags.ndim != 2 or mags.shape[0] < 1:
        raise ValueError(f"magnitudes must be [updates, entries], got shape {mags.shape}")
    if counted is not None and np.shape(counted) != (mags.shape[1],):
        raise ValueError(f"counted must be one flag per entry, shape ({mags.shape[1]},), "
                         f"got shape {np.shape(counted)}")
    config = dataclasses.replace(config, schedule="worm")

    def step(state, mag):
        state = search_lib.update_with_mask(
            state, masks.flat_magnitude_mask(mag, config.prune_ratio), config,
            finite=jnp.all(jnp.isfinite(mag)), counted=counted)
        return state, (state.d_max, state.d_avg, state.converged, state.active)

    _, out = jax.jit(lambda m: jax.lax.scan(
        step, search_lib.init(m.shape[1], config), m))(mags)
    d_max, d_avg, converged, triggered = (np.asarray(x) for x in jax.device_get(out))
    return ReplayTrace(d_max=d_max, d_avg=d_avg, converged=converged,
                       triggered=triggered, stop_update=_first(converged),
                       trigger_update=_first(triggered))
