"""The timing harness: timed windows, repetitions, interleaved A/B pairs, statistics.

Warm-up (compilation included) is never timed; a timed sample is a window of many
steps closed by one ``jax.block_until_ready``; figures are medians with the
interquartile range and min/max over repeated windows; A/B ratios come from windows
interleaved in one process, the order swapped every repetition so that slow drifts
of a shared machine hit both arms alike.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

def summarize(samples: Sequence[float]) -> dict:
    """Median, quartiles and extremes of repeated measurements.

    Args:
      samples: one number per timed repetition.

    Returns:
      {"n", "median", "q1", "q3", "iqr", "min", "max"}; quartiles are inclusive
      (equal to min/max for two samples).
    """
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError("summarize needs at least one sample")
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"n": len(xs), "median": statistics.median(xs), "q1": q1, "q3": q3,
            "iqr": q3 - q1, "min": min(xs), "max": max(xs)}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes; ``fn`` must block until its work is done."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Times ``reps`` calls of ``fn`` after ``warmup`` untimed ones.

    Args:
      fn: one timed window; must block until its work is done.
      reps: timed repetitions.
      warmup: untimed calls first (compilation, caches, thread pools).

    Returns:
      Seconds per call, one per repetition.
    """
    for _ in range(warmup):
        fn()
    return [timed(fn) for _ in range(reps)]


def interleave(fns: Sequence[Callable[[], Any]], reps: int,
               warmup: int = 1) -> list[list[float]]:
    """Interleaved timing of several arms, the order rotated every repetition.

    Args:
      fns: one window per arm (each blocks when done).
      reps: timed rounds; round i runs the arms starting from arm ``i % len(fns)``,
        so each arm goes first equally often and a slow drift of a shared machine
        hits every arm alike.
      warmup: untimed rounds first.

    Returns:
      Seconds per window, one list per arm; index i of every list is round i.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(reps):
        for j in range(len(fns)):
            arm = (i + j) % len(fns)
            times[arm].append(timed(fns[arm]))
    return times


def paired(fn_a: Callable[[], Any], fn_b: Callable[[], Any], reps: int,
           warmup: int = 1) -> tuple[list[float], list[float]]:
    """Interleaved A/B timing: A then B, then B then A, and so on.

    Args:
      fn_a: arm A's window (blocks when done).
      fn_b: arm B's window.
      reps: timed pairs.
      warmup: untimed pairs first.

    Returns:
      (seconds of A, seconds of B), index i of both from the same pair.
    """
    times_a, times_b = interleave([fn_a, fn_b], reps, warmup)
    return times_a, times_b


def ratio_stats(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Statistics of the per-pair ratios ``numerator[i] / denominator[i]``."""
    return summarize([n / d for n, d in zip(numerator, denominator)])


def steps_for_window(step_seconds: float, target_seconds: float, min_steps: int = 2,
                     max_steps: int = 500) -> int:
    """How many steps make one timed window of about ``target_seconds``.

    Long windows make the one host sync per window negligible; the floor keeps at
    least two dispatches in flight even for slow steps.
    """
    if not step_seconds > 0:
        return min_steps
    return int(min(max_steps, max(min_steps, math.ceil(target_seconds / step_seconds))))
