"""Statistics a reviewer asks for: mean, spread, n, paired CIs and sign tests.

Pure Python plus numpy/scipy, over plain lists of floats, so the study report
can be regenerated from its committed JSON on any machine.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["Summary", "PairedComparison", "summarize", "paired", "sign_test", "elbow"]


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1) and n of one metric."""

    mean: float | None
    sd: float | None  # None for n < 2: one run has no spread
    n: int

    def format(self, fmt: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
        """``mean ± sd (n=k)``; ``-`` when no run has the metric."""
        if self.n == 0:
            return "-"
        mean = f"{self.mean * scale:{fmt}}{suffix}"
        if self.sd is None:
            return f"{mean} (n=1)"
        return f"{mean} ± {self.sd * scale:{fmt}}{suffix} (n={self.n})"


def summarize(values: Sequence[float | None]) -> Summary:
    """The summary of the non-None, finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if x.size == 0:
        return Summary(None, None, 0)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None,
                   int(x.size))


def sign_test(differences: Sequence[float]) -> tuple[int, int, int, float | None]:
    """Exact two-sided sign test of the median difference against 0.

    Ties (difference exactly 0) are dropped, as is usual for the sign test.

    Returns:
      (positives, negatives, ties, p); p is None when every pair is a tie.

    Raises:
      ValueError: a difference is NaN or infinite (it would count as a tie).
    """
    bad = [d for d in differences if not math.isfinite(d)]
    if bad:
        raise ValueError(f"sign_test needs finite differences, got {bad}; drop "
                         "missing pairs first (``paired`` does)")
    pos = sum(1 for d in differences if d > 0)
    neg = sum(1 for d in differences if d < 0)
    ties = len(differences) - pos - neg
    m = pos + neg
    if m == 0:
        return pos, neg, ties, None
    tail = sum(math.comb(m, i) for i in range(min(pos, neg) + 1)) / 2.0 ** m
    return pos, neg, ties, min(1.0, 2.0 * tail)


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Per-seed differences ``b - a`` with a t confidence interval and sign test."""

    differences: tuple[float, ...]
    mean: float | None
    ci_low: float | None  # None below 2 pairs
    ci_high: float | None
    positives: int
    negatives: int
    ties: int
    sign_p: float | None
    confidence: float = 0.95

    @property
    def n(self) -> int:
        """Number of complete pairs."""
        return len(self.differences)

    def format(self, fmt: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
        """``+d [lo, hi]``; the interval is left out below two pairs."""
        if self.n == 0:
            return "-"
        text = f"{self.mean * scale:+{fmt}}{suffix}"
        if self.ci_low is not None:
            text += (f" [{self.ci_low * scale:+{fmt}}{suffix}, "
                     f"{self.ci_high * scale:+{fmt}}{suffix}]")
        return text


def paired(a: dict, b: dict, confidence: float = 0.95) -> PairedComparison:
    """Compares two arms seed by seed: ``b[seed] - a[seed]`` over shared seeds.

    Args:
      a: seed -> value of the reference arm (None values drop the pair).
      b: seed -> value of the compared arm.
      confidence: level of the two-sided Student-t interval of the mean
        difference.

    Returns:
      The paired comparison; the interval is exact under normal differences,
      the sign test needs no assumption beyond independent seeds.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    seeds = sorted(s for s in set(a) & set(b)
                   if a[s] is not None and b[s] is not None
                   and math.isfinite(a[s]) and math.isfinite(b[s]))
    diffs = tuple(float(b[s]) - float(a[s]) for s in seeds)
    pos, neg, ties, p = sign_test(diffs)
    if not diffs:
        return PairedComparison((), None, None, None, pos, neg, ties, p, confidence)
    x = np.asarray(diffs)
    mean = float(x.mean())
    low = high = None
    if x.size >= 2:
        half = float(scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1)
                     * x.std(ddof=1) / math.sqrt(x.size))
        low, high = mean - half, mean + half
    return PairedComparison(diffs, mean, low, high, pos, neg, ties, p, confidence)


def elbow(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Where a curve's slope changes: the breakpoint of the best two-line fit.

    Fits one least-squares line to the points up to and including a candidate
    breakpoint and another from it on (the two share the breakpoint), over
    every interior point, and returns the ``(x, y)`` of the breakpoint with the
    smallest total squared error.

    Args:
      xs, ys: the curve's points (e.g. search epochs and their d_max).

    Returns:
      ``(x, y)`` of the breakpoint, or None below four points.
    """
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if x.size < 4:
        return None

    def sse(xx, yy):
        coef = np.polyfit(xx, yy, 1)
        return float(np.sum((np.polyval(coef, xx) - yy) ** 2))

    best = min(range(1, x.size - 1),
               key=lambda i: sse(x[:i + 1], y[:i + 1]) + sse(x[i:], y[i:]))
    return float(x[best]), float(y[best])
