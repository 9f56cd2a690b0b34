"""The paper's figures from metrics records: mask distance (Fig. 1) and loss (Fig. 2).

Both take the epoch/step records that ``wormjax.pipeline.report.MetricsWriter`` logs (or
``read_records`` reads back), group them by variant and seed, draw the mean over
seeds (faint per-seed lines when there are several) and write a PNG with the
Agg backend, so they run on headless machines. Missing data yields a figure
that says so rather than an exception: a plot must never end a finished run.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # No display on training machines; must precede pyplot.
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

__all__ = ["plot_mask_distance", "plot_loss_curves", "save_figure"]

_STYLES = ("-", "--", ":", "-.")
_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _by_run(records: Iterable[dict], kinds: tuple) -> dict[str, dict[int, list[dict]]]:
    """variant -> seed -> records whose kind is in ``kinds``, in first-seen order."""
    runs: dict[str, dict[int, list[dict]]] = {}
    for r in records or ():
        if r.get("kind") in kinds:
            runs.setdefault(r.get("variant", "run"), {}).setdefault(r.get("seed", 0), []).append(r)
    return runs


def _mean_curve(series: Sequence[tuple[Sequence[float], Sequence[float]]]):
    """Mean over series at each x any of them has; series may end at different x.

    Seeds stop searching at different epochs, so late points average fewer runs.
    """
    sums: dict[float, list[float]] = {}
    for xs, ys in series:
        for x, y in zip(xs, ys):
            if y is not None and np.isfinite(y):
                sums.setdefault(x, []).append(y)
    xs = sorted(sums)
    return np.asarray(xs, dtype=float), np.asarray([np.mean(sums[x]) for x in xs])


def _draw(ax, series, color, style, label) -> None:
    if len(series) > 1:
        for xs, ys in series:
            ax.plot(xs, ys, color=color, linestyle=style, alpha=0.2, linewidth=0.8)
        label = f"{label} (mean of {len(series)})"
    xs, ys = _mean_curve(series)
    if len(xs):
        ax.plot(xs, ys, color=color, linestyle=style, marker="." if len(xs) < 40 else None,
                label=label)


def save_figure(fig, ax, path: str, has_data: bool, *, dpi: int = 120,
                title: str | None = None) -> str:
    """Writes a one-axes figure as PNG (with its legend, or "no data") and closes it.

    Returns:
      ``path``.
    """
    if title is not None:
        ax.set_title(title, fontsize="medium")
    if not has_data:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _window_full(r: dict) -> bool:
    # Until the window is full every distance is reported as 1.0 (docs/algorithm.md sec. 2).
    if "window_full" in r:
        return bool(r["window_full"])
    return r.get("d_max") is not None and r["d_max"] < 1.0


def plot_mask_distance(records: Iterable[dict], path: str, stop_distance: float | None = None,
                       trigger_threshold: float | None = None,
                       full_window_only: bool = False) -> str:
    """Fig. 1: d_max and d_avg per search epoch, one line style per variant.

    Epochs before the window is full (distances 1.0) are shaded, or dropped with
    ``full_window_only`` as in the paper. A vertical line marks each variant's mean
    ticket epoch (the first full-window epoch with d_max <= stop_distance).

    Args:
      records: epoch records (others are ignored); several variants and seeds allowed.
      path: PNG destination.
      stop_distance: s, drawn as a horizontal line; None skips it.
      trigger_threshold: the WORM trigger s + delta; None skips it.
      full_window_only: plot only epochs where the window is full.

    Returns:
      ``path``.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    has_data, first_full = False, []
    for i, (variant, seeds) in enumerate(_by_run(records, ("epoch",)).items()):
        style = _STYLES[i % len(_STYLES)]
        d_max, d_avg, tickets = [], [], []
        for recs in seeds.values():
            recs = [r for r in recs if r.get("phase") == "search" and r.get("d_max") is not None]
            full = [r for r in recs if _window_full(r)]
            if full:
                first_full.append(full[0]["epoch"])
            if full_window_only:
                recs = full
            epochs = [r["epoch"] for r in recs]
            d_max.append((epochs, [r["d_max"] for r in recs]))
            d_avg.append((epochs, [r.get("d_avg") for r in recs]))
            if stop_distance is not None:
                hits = [r["epoch"] for r in full if r["d_max"] <= stop_distance]
                if hits:
                    tickets.append(hits[0])
        if not any(e for e, _ in d_max):
            continue
        has_data = True
        _draw(ax, d_max, _COLORS[0], style, f"{variant} d_max")
        _draw(ax, d_avg, _COLORS[1], style, f"{variant} d_avg")
        if tickets:
            ax.axvline(np.mean(tickets), color="0.3", linestyle=style, linewidth=1,
                       label=f"{variant} ticket epoch" + (" (mean)" if len(tickets) > 1 else ""))
    if has_data and first_full and not full_window_only:
        # Distances are 1.0 by definition here; shade them so the elbow reads clearly.
        ax.axvspan(ax.get_xlim()[0], min(first_full) - 0.5, color="0.9", zorder=0,
                   label="window not full")
    if stop_distance is not None:
        ax.axhline(stop_distance, color="tab:red", linewidth=1, label=f"stop s = {stop_distance:g}")
    if trigger_threshold is not None:
        ax.axhline(trigger_threshold, color="tab:green", linestyle=":", linewidth=1,
                   label=f"trigger = {trigger_threshold:g}")
    ax.set(xlabel="search epoch", ylabel="mask distance", title="Mask distance trajectory")
    return save_figure(fig, ax, path, has_data)


def _loss_series(recs: list[dict], phase: str) -> tuple[list[float], list[float]]:
    """(step, loss) of one phase; epoch train_loss at cumulative steps if no step records."""
    steps = [r for r in recs if r.get("kind") == "step" and r.get("phase") == phase]
    if steps:
        return [r["step"] for r in steps], [r.get("loss") for r in steps]
    epochs = [r for r in recs if r.get("kind") == "epoch" and r.get("phase") == phase]
    xs, ys, done = [], [], 0
    for r in epochs:
        done += r.get("steps") or 0
        if r.get("train_loss") is not None:
            xs.append(done)
            ys.append(r["train_loss"])
    return xs, ys


def _search_length(recs: list[dict]) -> float:
    """Steps spent searching: summed from epoch records, else the last logged step."""
    total = sum(r.get("steps") or 0 for r in recs
                if r.get("kind") == "epoch" and r.get("phase") == "search")
    if total:
        return float(total)
    steps = [r["step"] for r in recs if r.get("kind") == "step" and r.get("phase") == "search"]
    return float(max(steps)) if steps else 0.0


def plot_loss_curves(records: Iterable[dict], path: str) -> str:
    """Fig. 2: training loss against step, search then retraining, per variant.

    Retraining steps are offset by the search length (the mean over seeds when
    there are several) and a vertical line marks that prune point.

    Args:
      records: step and/or epoch records; several variants and seeds allowed.
      path: PNG destination.

    Returns:
      ``path``.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    has_data = False
    for i, (variant, seeds) in enumerate(_by_run(records, ("step", "epoch")).items()):
        color = _COLORS[i % len(_COLORS)]
        search = [_loss_series(recs, "search") for recs in seeds.values()]
        retrain = [_loss_series(recs, "retrain") for recs in seeds.values()]
        if not any(xs for xs, _ in search + retrain):
            continue
        has_data = True
        offset = float(np.mean([_search_length(recs) for recs in seeds.values()]))
        _draw(ax, [s for s in search if s[0]], color, "-", f"{variant} search")
        shifted = [([x + offset for x in xs], ys) for xs, ys in retrain if xs]
        _draw(ax, shifted, color, "--", f"{variant} retrain")
        if shifted:
            ax.axvline(offset, color=color, linestyle=":", linewidth=1,
                       label=f"{variant} prune point")
    ax.set(xlabel="training step", ylabel="train loss", title="Loss trajectory")
    return save_figure(fig, ax, path, has_data)
