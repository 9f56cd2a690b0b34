"""The study's figures from its results JSON: Fig. 1 and Fig. 2 with spread bands.

Each arm is drawn as its mean over seeds with a band of ± one sample standard
deviation at every epoch that at least two seeds reach. PNGs are small
(6 x 3.6 inches at 100 dpi) so they can be committed.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # Headless machines; must precede pyplot.
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from wormjax.pipeline import plots  # pylint: disable=wrong-import-position
from wormjax.study import results as results_lib  # pylint: disable=wrong-import-position

__all__ = ["distance_figure", "loss_figure", "loss_points"]

_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _band(ax, series: Sequence[dict], color, style, label) -> bool:
    """Mean line and ± sd band of ``{x: y}`` series; False when there is no data."""
    xs = sorted({x for s in series for x in s})
    if not xs:
        return False
    values = [[s[x] for s in series if x in s] for x in xs]
    mean = np.asarray([np.mean(v) for v in values])
    ax.plot(xs, mean, color=color, linestyle=style, marker=".",
            label=f"{label} (n={len(series)})")
    two = [i for i, v in enumerate(values) if len(v) >= 2]
    if two:
        sd = np.asarray([np.std(values[i], ddof=1) for i in two])
        ax.fill_between([xs[i] for i in two], mean[two] - sd, mean[two] + sd,
                        color=color, alpha=0.2, linewidth=0)
    return True


def _arms(runs):
    arms: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (r["variant"], r["seed"])):
        arms.setdefault(r["variant"], []).append(r)
    return arms


def distance_figure(runs: Sequence[dict], path: str, title: str,
                    stop_distance: float | None, trigger: float | None) -> str:
    """Fig. 1: d_max (solid) and d_avg (dashed) per search epoch, window full."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for i, (arm, arm_runs) in enumerate(_arms(runs).items()):
        color = _COLORS[i % len(_COLORS)]
        for field, style in (("d_max", "-"), ("d_avg", "--")):
            series = [{t["epoch"]: t[field] for t in r["trajectory"]
                       if t["phase"] == "search" and t.get(field) is not None
                       and t["d_max"] < 1.0} for r in arm_runs]
            drawn |= _band(ax, [s for s in series if s], color, style,
                           f"{arm} {field}")
    if stop_distance is not None:
        ax.axhline(stop_distance, color="k", linewidth=0.8, label=f"s = {stop_distance}")
    if trigger is not None:
        ax.axhline(trigger, color="k", linestyle=":", linewidth=0.8,
                   label=f"s + delta = {trigger:g}")
    ax.set_xlabel("search epoch")
    ax.set_ylabel("mask distance")
    return plots.save_figure(fig, ax, path, drawn, dpi=100, title=title)


def loss_points(run: dict) -> tuple[dict, dict]:
    """One run's train loss as ``({epoch: loss}, {epoch: loss})``: search, retraining.

    Retraining's epochs continue after the last trained search epoch, even when
    an earlier epoch's loss is missing (a null in the JSON).
    """
    search = results_lib.trained_search(run)
    offset = 1 + max((t["epoch"] for t in search), default=-1)
    return ({t["epoch"]: t["train_loss"] for t in search},
            {offset + t["epoch"]: t["train_loss"] for t in run["trajectory"]
             if t["phase"] == "retrain" and t.get("train_loss") is not None})


def loss_figure(runs: Sequence[dict], path: str, title: str) -> str:
    """Fig. 2: train loss per epoch, search (solid) then retraining (dashed); triggers marked."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for i, (arm, arm_runs) in enumerate(_arms(runs).items()):
        color = _COLORS[i % len(_COLORS)]
        # Two bands, not one line: seeds whose tickets come at different epochs
        # would otherwise average one seed's search loss with another's
        # retraining loss (a pruned network's) at the same epoch.
        search, retrain = zip(*(loss_points(r) for r in arm_runs))
        drawn |= _band(ax, [s for s in search if s], color, "-", arm)
        drawn |= _band(ax, [s for s in retrain if s], color, "--", f"{arm}, retraining")
        triggers = {next((t["epoch"] for t in results_lib.trained_search(r)
                          if t.get("truncation_active")), None) for r in arm_runs}
        for trig in sorted(triggers - {None}):
            ax.axvline(trig, color=color, linestyle=":", linewidth=0.8)
    ax.set_xlabel("epoch (search, then retraining after the prune)")
    ax.set_ylabel("train loss")
    return plots.save_figure(fig, ax, path, drawn, dpi=100, title=title)
