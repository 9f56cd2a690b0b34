"""One training epoch and one evaluation pass over device-prefetched batches.

The host reads the device only at the logging interval and at the end of the
epoch; between those the steps are dispatched asynchronously.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
from tqdm.auto import tqdm

from wormjax.data import pipeline
from wormjax.pipeline import divergence
from wormjax.pipeline import steps as steps_lib

__all__ = ["NonFiniteLossError", "EpochResult", "train_epoch", "evaluate"]


class NonFiniteLossError(divergence.NonFiniteError):
    """The training loss became NaN or infinite."""


class EpochResult(NamedTuple):
    """What ``train_epoch`` hands back: enough to checkpoint inside the epoch."""

    state: Any
    metrics: dict  # of the steps run so far, this call and earlier ones
    seconds: float  # this call's
    steps: int  # steps of the epoch done, counting ``start_step``
    acc: Any  # the running metric accumulator (resume it with ``acc=``)


def train_epoch(step_fn: Callable, state, batches: Iterable, *, num_steps: int,
                log_every: int, on_log: Callable[[int, dict], None] | None = None,
                description: str = "", progress: bool = True, prefetch: int = 2,
                put_fn: Callable | None = None, replicate: Callable = lambda x: x,
                start_step: int = 0, acc=None,
                should_stop: Callable[[], bool] | None = None) -> EpochResult:
    """Runs ``step_fn(state, batch, acc) -> (state, acc)`` over one epoch.

    Args:
      step_fn: the jitted step with its other arguments bound.
      state: the train state (donated to the step).
      batches: host batches of this epoch.
      num_steps: how many batches ``batches`` yields (for the progress bar).
      log_every: read the running metrics every this many steps (0 = only at
        the end); reading is the only host-device sync.
      on_log: called with (step in epoch, running metrics) at each read.
      description: progress bar label.
      progress: show a progress bar (only when stderr is a terminal: in a piped
        log its carriage-return frames would pile up).
      prefetch: batches transferred to the device ahead of the step.
      put_fn: moves a host batch to the devices (None: the default device).
      replicate: places the metric accumulator like the state (a sharding
        that differs from one call to the next would recompile the step).
      start_step: steps of this epoch already done (``batches`` starts after
        them); a resumed epoch counts and logs steps as the whole one would.
      acc: the accumulator of those steps (None: a fresh one).
      should_stop: read before every step (host only); True ends the epoch
        early, the result saying how many steps were done.

    Returns:
      An ``EpochResult``.

    Raises:
      NonFiniteLossError: the loss is NaN or infinite at a read.
    """
    start = time.perf_counter()
    acc = replicate(steps_lib.zero_metrics() if acc is None else acc)
    # Carriage-return frames would litter a piped log.
    bar = tqdm(total=num_steps, initial=start_step, desc=description, leave=False,
               file=sys.stderr, disable=not (progress and sys.stderr.isatty()),
               dynamic_ncols=True)
    done = start_step
    with pipeline.prefetch_to_device(batches, size=prefetch, put_fn=put_fn) as it:
        for batch in it:
            if should_stop is not None and should_stop():
                break
            state, acc = step_fn(state, batch, acc)
            done += 1
            if log_every and done % log_every == 0:
                running = _checked(acc, description)
                bar.set_postfix(loss=f"{running['loss']:.4f}",
                                acc=f"{running['accuracy']:.3f}", refresh=False)
                bar.update(log_every)
                if on_log is not None:
                    on_log(done, running)
    metrics = _checked(acc, description) if done else {"loss": math.nan,
                                                         "accuracy": math.nan}
    bar.close()
    return EpochResult(state, metrics, time.perf_counter() - start, done, acc)


def _checked(acc, description: str) -> dict:
    running = steps_lib.read_metrics(acc)
    if not math.isfinite(running["loss"]):
        raise NonFiniteLossError(
            f"training loss is {running['loss']} ({description}); the run stopped before "
            "this epoch's checkpoint. Lower the learning rate or check the data.")
    return running


def evaluate(eval_fn: Callable, params, batch_stats, batches: Iterator, *,
             prefetch: int = 2, put_fn: Callable | None = None,
             replicate: Callable = lambda x: x) -> dict:
    """Accuracy and loss over every example of ``batches`` exactly once."""
    acc = replicate(steps_lib.zero_metrics())
    with pipeline.prefetch_to_device(batches, size=prefetch, put_fn=put_fn) as it:
        for batch in it:
            acc = eval_fn(params, batch_stats, batch, acc)
    return steps_lib.read_metrics(acc)


def block(tree) -> None:
    """Waits for every array of ``tree`` (timing boundaries only)."""
    jax.block_until_ready(tree)
