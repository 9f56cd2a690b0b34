"""BatchNorm recalibration: fresh running statistics for a pruned network.

Pruning silences channels, so the running means and variances a network
collected while dense no longer describe the activations that reach each
BatchNorm; evaluated with them, a pruned network can sit at chance although
its weights are fine. Recalibration recomputes the statistics on a few
training batches in train mode, with no parameter update.

It works for any Flax BatchNorm whose running statistics follow
``new = momentum * old + (1 - momentum) * batch_statistic``, without knowing
the module or its momentum: one train-mode pass from all-zero statistics
returns ``(1 - momentum) * batch_statistic``, and a pass from all-one
statistics on the same batch tells ``momentum``. The result is the plain
average of the per-batch statistics (PyTorch's cumulative mode,
``momentum=None``), so it does not depend on the order of the batches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

__all__ = ["recalibrate_batch_stats"]


def recalibrate_batch_stats(stats_fn: Callable[[Any, Any, Any], Any], params,
                            batch_stats, batches: Iterable, num_batches: int):
    """Averages the per-batch BatchNorm statistics of ``num_batches`` batches.

    Args:
      stats_fn: ``(params, batch_stats, batch) -> new batch_stats`` after one
        train-mode forward pass (e.g. ``model.apply(..., train=True,
        mutable=["batch_stats"])[1]["batch_stats"]``), ideally jitted; it is
        called ``num_batches + 1`` times with one set of shapes.
      params: the network's parameters (unchanged).
      batch_stats: the current statistics (only their structure is used).
      batches: training batches; the first ``num_batches`` are consumed.
      num_batches: how many batches to average over, >= 1.

    Returns:
      New ``batch_stats`` with the structure of ``batch_stats``.

    Raises:
      ValueError: ``num_batches`` < 1, fewer batches than asked for, or a
        statistic that does not move with its batch (momentum 1).
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) \
            or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    zeros = jax.tree_util.tree_map(jnp.zeros_like, batch_stats)
    ones = jax.tree_util.tree_map(jnp.ones_like, batch_stats)
    total, keep = None, None
    seen = 0
    for batch in batches:
        if seen == num_batches:
            break
        scaled = stats_fn(params, zeros, batch)
        if keep is None:
            # ones-pass minus zeros-pass = momentum, per entry.
            momentum = jax.tree_util.tree_map(jnp.subtract,
                                              stats_fn(params, ones, batch), scaled)
            keep = jax.tree_util.tree_map(lambda m: 1.0 - m, momentum)
            low = min(float(jnp.min(k)) for k in jax.tree_util.tree_leaves(keep))
            if not low > 1e-6:
                raise ValueError("a BatchNorm statistic does not move with its batch "
                                 "(momentum 1); it cannot be recalibrated")
        total = scaled if total is None else jax.tree_util.tree_map(jnp.add, total,
                                                                    scaled)
        seen += 1
    if seen < num_batches:
        raise ValueError(f"recalibration asked for {num_batches} batches; the data "
                         f"gave {seen}")
    return jax.tree_util.tree_map(lambda t, k: t / (k * seen), total, keep)

