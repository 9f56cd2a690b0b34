"""Post-prune BatchNorm recalibration inside the pipeline (``pruning.recalibrate_bn_batches``).

After pruning, the network's running statistics still describe the dense
network. With ``pruning.recalibrate_bn_batches = N > 0`` the pipeline
recomputes them on the first N training batches of the next epoch's order,
in train mode and with no parameter update
(:func:`wormjax.recalibrate_batch_stats`), before the post-prune evaluation
and retraining. The summary then holds both post-prune accuracies.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax

from wormjax import recalibrate

__all__ = ["stats_fn", "recalibrated"]


def stats_fn(forward: Callable, counter=None) -> Callable:
    """The jitted ``(params, batch_stats, batch) -> batch_stats`` of one train pass.

    Args:
      forward: the task's forward (``steps.Forward``), bound to its model.
      counter: a ``steps.CompileCounter``; each compilation is recorded as
        ``recalibrate``.
    """
    # BatchNorm in train mode normalises with the batch's own statistics, so
    # the pass is deterministic; the key only feeds dropout, which CNNs lack.
    key = jax.random.PRNGKey(0)

    def one_pass(params, batch_stats, batch):
        if counter is not None:
            counter.hit("recalibrate")
        _, new_stats = forward({"params": params, "batch_stats": batch_stats}, batch,
                               True, key)
        return new_stats

    return jax.jit(one_pass)


def recalibrated(state, fn: Callable, host_batches, num_batches: int,
                 put_fn: Callable):
    """``state`` with BatchNorm statistics averaged over ``num_batches`` batches.

    Args:
      state: the pruned train state (its parameters are not changed).
      fn: :func:`stats_fn` of the model the state belongs to.
      host_batches: training batches on the host.
      num_batches: how many to average over.
      put_fn: moves a host batch to the devices, as for training.
    """
    batches = (put_fn(b) for b in itertools.islice(host_batches, num_batches))
    new_stats = recalibrate.recalibrate_batch_stats(
        fn, state.params, state.batch_stats, batches, num_batches)
    return state.replace(batch_stats=new_stats)
