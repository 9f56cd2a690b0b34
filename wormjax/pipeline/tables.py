"""The paper's result tables (I-VI) from run summaries, as Markdown text.

Each function takes the plain-dict run summaries that ``wormjax.pipeline.run``
writes (one per variant and seed) and returns a pipe table that also reads well
in a terminal: the EB-vs-WORM comparison (Tables II and III), the truncation-ratio
sweep (Table I) and the GLUE blocks (Tables IV-VI). Several seeds of a variant
become mean ± sample standard deviation. Every line fits in ``WIDTH`` columns: a
table too wide for it continues in a second block that repeats its first column,
and notes are wrapped. Pure Python and numpy.
"""

from __future__ import annotations

import collections
import textwrap
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["comparison_table", "sweep_table", "glue_table", "WIDTH"]

WIDTH = 80  # a default terminal
# Value cells are at least this wide, so that a column keeps its width while
# a single run's values change magnitude (98.61% vs 100.00%, 9.8 s vs 10.2 s).
_MIN_CELL = 9
_WALL_TIME_NOTE = ("Wall time: seconds of search + pruning + retraining (not the "
                   "compilation before them); measured, so it varies between identical "
                   "runs.")


def _values(runs: Sequence[dict], key) -> list[float]:
    """Non-None values of ``key`` (a name or a callable) over runs."""
    out = [key(r) if callable(key) else r.get(key) for r in runs]
    return [float(v) for v in out if v is not None]


def _stat(values: Sequence[float], fmt: str, scale: float = 1.0, suffix: str = "",
          sign: bool = False) -> str:
    """Mean +- sample std (ddof=1) of ``values``; just the value for one; '-' for none."""
    if not values:
        return "-"
    x = np.asarray(values, dtype=float) * scale
    spec = ("+" if sign else "") + fmt
    if len(x) == 1:
        return f"{x[0]:{spec}}{suffix}"
    return f"{x.mean():{spec}} ± {x.std(ddof=1):{fmt}}{suffix}"


def _cell(fmt, key, **kwargs):
    """A metric row's cell maker: ``fmt`` of ``key``'s values over one column's runs."""
    return lambda runs: fmt(_values(runs, key), **kwargs)


def _count(values: Sequence[float]) -> str:
    # Epoch counts: integers for one seed (as the paper prints them), one decimal for a mean.
    if len(values) == 1 and float(values[0]).is_integer():
        return str(int(values[0]))
    return _stat(values, ".1f")


def _pct(values: Sequence[float], sign: bool = False) -> str:
    return _stat(values, ".2f", 100.0, "%", sign)


def _seconds(values: Sequence[float]) -> str:
    # One decimal: whole seconds made a ~2.5 s quick-start run read 2s or 3s.
    return _stat(values, ".1f", suffix=" s")


def _total_time(run: dict) -> float | None:
    return (run.get("times") or {}).get("total")


def _restore(runs: Sequence[dict], max_epochs: int | None) -> str:
    reached = _values(runs, "restore_epochs")
    missed = len(runs) - len(reached)
    never = f">{max_epochs}" if max_epochs is not None else ">max"
    if not reached:
        return never
    cell = _count(reached)
    return cell if not missed else f"{cell} ({missed}/{len(runs)} {never})"


def _converged(runs: Sequence[dict]) -> str:
    return f"{sum(bool(r.get('converged')) for r in runs)}/{len(runs)}"


def _restore_header(summaries: Sequence[dict]) -> str:
    targets = {(t.get("kind"), t.get("value"))
               for t in (s.get("restore_target") for s in summaries) if t}
    if len(targets) != 1:
        return "Restore Epochs" + (" (mixed targets)" if targets else "")
    kind, value = targets.pop()
    if kind == "absolute":
        return f"{100 * value:g}% Restore Epochs"
    return f"Restore Epochs (>={value:g} x pre)"


def _group(summaries: Iterable[dict], key: str) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = {}
    for s in summaries:
        groups.setdefault(s.get(key), []).append(s)
    return groups


def _labels(groups: dict[str, list[dict]]) -> dict[str, str]:
    """The paper's names for variants; the variant name wherever they would collide."""
    names = {"none": "EB Train", "worm": "WORM"}
    labels = {v: names.get(runs[0].get("schedule"), v) for v, runs in groups.items()}
    counts = collections.Counter(labels.values())
    return {v: (f"{lab} ({v})" if counts[lab] > 1 and lab != v else lab)
            for v, lab in labels.items()}


def _flagged(label: str, runs: Sequence[dict]) -> str:
    """``label``, marked when some of its runs diverged (accuracy at chance)."""
    n = sum(bool(r.get("diverged")) for r in runs)
    if not n:
        return label
    return f"{label} DIVERGED" + (f" {n}/{len(runs)}" if len(runs) > 1 else "")


def _diverged_note(summaries: Sequence[dict]) -> str:
    if not any(s.get("diverged") for s in summaries):
        return ""
    return ("DIVERGED: the trained or retrained accuracy is at chance, so these numbers "
            "do not measure the method; see diverged_reason in summary.json.")


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]], notes=(),
            width: int = WIDTH) -> str:
    """A Markdown pipe table in ``width`` columns: value columns right-aligned, at
    least ``_MIN_CELL`` wide, split into blocks that repeat the first column when
    the table is wider; then the non-empty notes, wrapped."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    widths = widths[:1] + [max(w, _MIN_CELL) for w in widths[1:]]
    groups, current = [], []
    for i in range(1, len(widths)):
        # "| first | a | b |": 4 characters for the first cell's frame, 3 per cell.
        if current and 4 + widths[0] + sum(widths[j] + 3 for j in current + [i]) > width:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)

    def line(cells, cols):
        return "| " + " | ".join(f"{cells[j]:<{widths[j]}}" if j == 0 else
                                 f"{cells[j]:>{widths[j]}}" for j in cols) + " |"

    blocks = []
    for group in groups:
        cols = [0] + group
        rule = "|" + "|".join("-" * (widths[j] + 2) if j == 0 else
                              "-" * (widths[j] + 1) + ":" for j in cols) + "|"
        blocks.append("\n".join([line(headers, cols), rule]
                                + [line(r, cols) for r in rows]))
    text = "\n\n".join(blocks)
    wrapped = [textwrap.fill(n, width) for n in notes if n]
    return "\n".join([text] + wrapped)


def _not_reached_note(summaries: Sequence[dict]) -> str:
    if all(s.get("restore_epochs") is not None for s in summaries):
        return ""
    return ("Restore epochs: mean over the runs that reached the target; '>N' / '>max' "
            "counts the runs that did not within the retraining budget (excluded).")


def _chance_note(groups: dict[str, list[dict]], labels: dict[str, str],
                 num_classes: int | None) -> str:
    """Why post-prune accuracy can sit at chance, for the variants where it does."""
    if not num_classes or num_classes < 2:
        return ""
    chance = 1.0 / num_classes
    # Within 5 points of chance: a network that guesses, or predicts one class.
    near = [v for v, runs in groups.items()
            if any(a <= chance + 0.05 for a in _values(runs, "post_prune_accuracy"))]
    if not near:
        return ""
    note = (f"Post-prune accuracy is near chance ({100 * chance:.2f}% for {num_classes} "
            f"classes) for {', '.join(labels[v] for v in near)}. It is measured right "
            "after pruning, before any retraining has let the kept weights adapt.")
    after = {labels[v]: _pct(_values(groups[v], "retrain_accuracy_after_one_epoch"))
             for v in near}
    if any(cell != "-" for cell in after.values()):
        note += " One retraining epoch brings it to " + ", ".join(
            f"{cell} ({label})" for label, cell in after.items()) + "."
    return note


# The metrics the result tables share, each in both tables' words: key ->
# (Table II's label, Tables IV-VI's label, the cell over one column's runs).
_METRICS = {
    "ticket_epoch": ("Ticket Search Epoch Count", "Epochs to Prune",
                     _cell(_count, "ticket_epoch")),
    "pre_prune": ("Pre-Pruned Acc.", "Pre-Pruned Accuracy",
                  _cell(_pct, "pre_prune_accuracy")),
    "post_prune": ("Post-Prune Acc.", "Pruned Accuracy",
                   _cell(_pct, "post_prune_accuracy")),
    "one_epoch": ("Retrain Acc. after One Epoch", "Accuracy after 1 Epoch of Retraining",
                  _cell(_pct, "retrain_accuracy_after_one_epoch")),
    "wall_time": ("Total Wall Time", "Time to Prune and Re-train",
                  _cell(_seconds, _total_time)),
    "converged": ("Converged", "Converged", _converged),
}
_TABLE_II, _TABLE_IV = 0, 1  # which label of _METRICS


def _rows(table: int, keys: Sequence[str]) -> list:
    """``(label, cell)`` of each metric in ``keys``, labelled as ``table`` does."""
    return [(_METRICS[k][table], _METRICS[k][2]) for k in keys]


def comparison_table(summaries: Sequence[dict], max_retrain_epochs: int | None = None,
                     num_classes: int | None = None) -> str:
    """EB Train vs WORM: the paper's Tables II and III, one column per variant.

    The paper has a row per variant; here each variant is a column, so that two
    or three variants with the paper's metric names fit in ``WIDTH`` columns.

    Args:
      summaries: run summaries; one column per variant, mean ± sample std over seeds.
      max_retrain_epochs: shown as '>N' for runs that never reached the target.
      num_classes: the task's classes; a note explains post-prune accuracies near
        chance (1 / num_classes). None: no such note.

    Returns:
      The table as a string, then its notes.
    """
    groups = _group(summaries, "variant")
    labels = _labels(groups)
    metrics = (_rows(_TABLE_II, ("ticket_epoch", "pre_prune", "post_prune", "one_epoch"))
               + [(_restore_header(summaries), lambda rs: _restore(rs, max_retrain_epochs))]
               + _rows(_TABLE_II, ("wall_time", "converged")))
    headers = ["Algorithm"] + [_flagged(labels[v], runs) for v, runs in groups.items()]
    rows = [[name] + [fn(runs) for runs in groups.values()] for name, fn in metrics]
    return _render(headers, rows, [_not_reached_note(summaries), _WALL_TIME_NOTE,
                                   _chance_note(groups, labels, num_classes),
                                   _diverged_note(summaries)])


def sweep_table(summaries: Sequence[dict], max_retrain_epochs: int | None = None) -> str:
    """The truncation-ratio sweep in the layout of the paper's Table I.

    Runs with schedule "always" form one row per r; schedule "none" (EB Train) is the
    r = 1 row whatever its configured ratio, since it never truncates.

    Args:
      summaries: run summaries; other schedules are ignored.
      max_retrain_epochs: shown as '>N' for runs that never reached the target.

    Returns:
      The table as a string, rows by decreasing r.
    """
    by_ratio: dict[float, list[dict]] = {}
    for s in summaries:
        if s.get("schedule") in ("always", "none"):
            r = 1.0 if s["schedule"] == "none" else float(s["truncation_ratio"])
            by_ratio.setdefault(r, []).append(s)
    chosen = [s for runs in by_ratio.values() for s in runs]
    # Short headers, spelled out below, so that a single seed's rows fit in WIDTH.
    headers = ["r", "Search Ep.", "Post-Prune", "Restore Ep.", "Wall Time", "Conv."]
    legend = ("r: truncation parameter. Search Ep.: ticket search epoch count. "
              "Post-Prune: accuracy right after pruning. Restore Ep.: retraining "
              f"epochs to the restore target ({_restore_header(chosen)}). "
              "Conv.: runs whose search converged.")
    rows = [[_flagged(f"{r:g}", runs), _count(_values(runs, "ticket_epoch")),
             _pct(_values(runs, "post_prune_accuracy")), _restore(runs, max_retrain_epochs),
             _seconds(_values(runs, _total_time)),
             _converged(runs)] for r, runs in sorted(by_ratio.items(), reverse=True)]
    return _render(headers, rows, [legend, _not_reached_note(chosen), _WALL_TIME_NOTE,
                                   _diverged_note(chosen)])


def _gain(run: dict) -> float | None:
    after, pre = run.get("retrain_accuracy_after_one_epoch"), run.get("pre_prune_accuracy")
    return None if after is None or pre is None else after - pre


def glue_table(summaries: Sequence[dict], baselines: dict[str, float] | None = None) -> str:
    """GLUE results in the layout of the paper's Tables IV-VI: one block per variant.

    Columns are tasks (a summary's ``task`` key; "all" without one). The gain is
    after-one-epoch minus pre-prune accuracy, per run, then averaged. "Time to Prune
    and Re-train" is the total wall time (search start to the restore target).

    Args:
      summaries: run summaries.
      baselines: optional task -> reference accuracy, printed as a "SOTA Baseline" row.

    Returns:
      The tables as a string, blocks separated by a blank line.
    """
    groups = _group(summaries, "variant")
    labels = _labels(groups)
    metrics = (_rows(_TABLE_IV, ("pre_prune", "ticket_epoch", "post_prune", "one_epoch"))
               + [("Accuracy Gain after 1 Epoch", _cell(_pct, _gain, sign=True))]
               + _rows(_TABLE_IV, ("wall_time", "converged")))
    blocks = []
    for variant, runs in groups.items():
        tasks = _group(runs, "task")
        names = [t if t is not None else "all" for t in tasks]
        rows = []
        if baselines:
            rows.append(["SOTA Baseline"] + [
                _pct([baselines[t]]) if t in baselines else "-" for t in tasks])
        rows += [[name] + [fn(task_runs) for task_runs in tasks.values()]
                 for name, fn in metrics]
        blocks.append(_render([_flagged(labels[variant], runs)] + names, rows,
                              [_diverged_note(runs)]))
    return "\n\n".join(blocks)
