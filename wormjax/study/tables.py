"""The study's Markdown tables: arms with mean ± sd (n), and paired differences.

Everything is computed from the compact results JSON (``results.py``), so the
committed tables can be regenerated without any workdir.
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

from wormjax.pipeline import divergence
from wormjax.study import results as results_lib
from wormjax.study import stats

__all__ = ["METRICS", "arms_table", "paired_table", "elbow_table"]


def _get(*keys) -> Callable[[dict], float | None]:
    def read(run: dict):
        node = run["summary"]
        for k in keys:
            if not isinstance(node, dict) or node.get(k) is None:
                return None
            node = node[k]
        return float(node)
    return read


def _search_epochs(run: dict) -> float | None:
    # Epochs trained before the ticket was drawn (the search's own cost).
    return _get("ticket_epoch")(run)


def _last_retrain_accuracy(run: dict) -> float | None:
    # Where retraining ended: the target, or the retraining budget.
    accs = [r["eval_accuracy"] for r in run.get("trajectory", [])
            if r.get("phase") == "retrain" and r.get("eval_accuracy") is not None]
    return float(accs[-1]) if accs else None


def _gain_after_one_epoch(run: dict) -> float | None:
    # The paper's "accuracy gain after 1 epoch": one retraining epoch's accuracy
    # minus the pre-prune accuracy (negative: not yet restored).
    after = _get("retrain_accuracy_after_one_epoch")(run)
    pre = _get("pre_prune_accuracy")(run)
    return None if after is None or pre is None else after - pre


def _prune_drop(run: dict) -> float | None:
    # The paper's "accuracy drop" from pruning (claim: smaller with WORM):
    # pre-prune minus post-prune accuracy, per run.
    pre, post = _get("pre_prune_accuracy")(run), _get("post_prune_accuracy")(run)
    return None if pre is None or post is None else pre - post


def _ends_near_chance(run: dict) -> bool:
    # The pipeline flags a *fall* to chance, not a run that pruning drops to
    # chance and that retraining never lifts off it: its numbers are no more a
    # measurement of the method, so the table names it too.
    chance = run["summary"].get("chance_accuracy")
    return chance is not None and divergence.at_chance(_last_retrain_accuracy(run), chance)


def _seeds_where(runs: Sequence[dict], test: Callable[[dict], bool]) -> str:
    # A flag column's cell: the seeds it marks, or "-".
    return ",".join(f"seed {r['seed']}" for r in runs if test(r)) or "-"


def _truncated_epochs(run: dict) -> float | None:
    # Search epochs trained with truncation active: 0 means WORM never fired.
    if not any(r.get("phase") == "search" for r in run.get("trajectory", [])):
        return None
    return float(sum(bool(r.get("truncation_active"))
                     for r in results_lib.trained_search(run)))


def _prune_and_retrain_time(run: dict) -> float | None:
    # Pruning and retraining alone. The paper's "time to prune and re-train"
    # (Tables IV-VI) included the search (docs/algorithm.md section 8): that
    # is "wall time total".
    prune, retrain = _get("times", "prune")(run), _get("times", "retrain")(run)
    return None if prune is None or retrain is None else prune + retrain


def _params_kept(run: dict) -> float | None:
    dense, pruned = _get("params", "dense")(run), _get("params", "pruned")(run)
    return pruned / dense if dense and pruned is not None else None


# (column, reader, format, scale, suffix): the paper's columns plus cost.
METRICS = (
    ("search epochs", _search_epochs, ".1f", 1.0, ""),
    ("pre-prune acc", _get("pre_prune_accuracy"), ".2f", 100.0, "%"),
    ("post-prune acc", _get("post_prune_accuracy"), ".2f", 100.0, "%"),
    ("prune drop", _prune_drop, ".2f", 100.0, " pts"),
    ("post-prune acc, stale BN stats", _get("post_prune_accuracy_before_recalibration"),
     ".2f", 100.0, "%"),
    ("acc after 1 retrain epoch", _get("retrain_accuracy_after_one_epoch"),
     ".2f", 100.0, "%"),
    ("gain after 1 retrain epoch", _gain_after_one_epoch, ".2f", 100.0, " pts"),
    ("pre-prune F1", _get("pre_prune_f1"), ".2f", 100.0, "%"),
    ("post-prune F1", _get("post_prune_f1"), ".2f", 100.0, "%"),
    ("F1 after 1 retrain epoch", _get("retrain_f1_after_one_epoch"), ".2f", 100.0, "%"),
    ("truncated search epochs", _truncated_epochs, ".1f", 1.0, ""),
    ("restore epochs", _get("restore_epochs"), ".1f", 1.0, ""),
    ("acc at retrain end", _last_retrain_accuracy, ".2f", 100.0, "%"),
    ("params kept", _params_kept, ".1f", 100.0, "%"),
    ("training PFLOPs", _get("flops", "training_flops_spent"), ".3f", 1e-15, ""),
    ("prune + retrain time", _prune_and_retrain_time, ".0f", 1.0, "s"),
    ("wall time total", _get("times", "total"), ".0f", 1.0, "s"),  # the paper's time
)


# Wall times only compare within one machine: a cell whose runs ran on
# different CPUs (or GPUs) is marked, and the table says so under it.
_MIXED = "†"
_MIXED_NOTE = (f"{_MIXED} these runs ran on different machines (`machine` in the "
               "results JSON): wall times compare only within one machine.")


def _cell(runs: Sequence[dict], suffix: str, text: str) -> tuple[str, bool]:
    mixed = suffix == "s" and len({results_lib.machine_label(r) for r in runs}) > 1
    return (f"{text} {_MIXED}" if mixed else text), mixed


def _by_arm(runs: Sequence[dict]) -> dict[str, list[dict]]:
    arms = collections.OrderedDict()
    for r in sorted(runs, key=lambda r: (r["variant"], r["seed"])):
        arms.setdefault(r["variant"], []).append(r)
    return arms


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _used_metrics(runs: Sequence[dict]):
    # A column no run has (e.g. BN recalibration when it was off) is left out.
    return [m for m in METRICS if any(m[1](r) is not None for r in runs)]


def arms_table(runs: Sequence[dict]) -> str:
    """One row per arm: every metric as mean ± sd (n); converged and restored k/n."""
    metrics = _used_metrics(runs)
    # "restored": runs that reached the restore target. The others have no
    # restore epochs, so that column's mean (and n) covers the restored only.
    # "flagged": runs the pipeline marked diverged (non-finite, or accuracy at
    # chance); shown only when there are any, since their numbers do not
    # measure the method (summary diverged_reason says why).
    # "ends near chance": runs whose last retraining accuracy is within
    # CHANCE_MARGIN of chance, flagged or not; also shown only when any.
    flagged = any(r["summary"].get("diverged") for r in runs)
    near = any(_ends_near_chance(r) for r in runs)
    headers = (["arm", "seeds", "converged", "restored"] + ["flagged"] * flagged
               + ["ends near chance"] * near + [m[0] for m in metrics])
    rows, mixed = [], False
    for arm, arm_runs in _by_arm(runs).items():
        conv = sum(bool(r["summary"].get("converged")) for r in arm_runs)
        restored = sum(r["summary"].get("restore_epochs") is not None for r in arm_runs)
        row = [arm, ",".join(str(r["seed"]) for r in arm_runs),
               f"{conv}/{len(arm_runs)}", f"{restored}/{len(arm_runs)}"]
        if flagged:
            row.append(_seeds_where(arm_runs, lambda r: r["summary"].get("diverged")))
        if near:
            row.append(_seeds_where(arm_runs, _ends_near_chance))
        for _, read, fmt, scale, suffix in metrics:
            text, m = _cell(arm_runs, suffix, stats.summarize(
                [read(r) for r in arm_runs]).format(fmt, scale, suffix))
            row.append(text)
            mixed |= m
        rows.append(row)
    return _render(headers, rows) + (f"\n\n{_MIXED_NOTE}" if mixed else "")


def paired_table(runs: Sequence[dict], reference: str, compared: str) -> str | None:
    """Per-seed ``compared - reference`` for every metric, with t CI and sign test.

    Returns None when the two arms share no seed.
    """
    arms = _by_arm(runs)
    if reference not in arms or compared not in arms:
        return None
    a = {r["seed"]: r for r in arms[reference]}
    b = {r["seed"]: r for r in arms[compared]}
    if not set(a) & set(b):
        return None
    headers = ["metric", reference, compared, f"{compared} − {reference} [95% t CI]",
               "sign test (+/−/0, exact p)"]
    rows, mixed = [], False
    for name, read, fmt, scale, suffix in _used_metrics(runs):
        cmp_ = stats.paired({s: read(r) for s, r in a.items()},
                            {s: read(r) for s, r in b.items()})
        p = "-" if cmp_.sign_p is None else f"{cmp_.sign_p:.3f}"
        ref_text, _ = _cell(list(a.values()), suffix, stats.summarize(
            [read(r) for r in a.values()]).format(fmt, scale, suffix))
        cmp_text, _ = _cell(list(b.values()), suffix, stats.summarize(
            [read(r) for r in b.values()]).format(fmt, scale, suffix))
        # The difference mixes machines whenever either arm's cell does.
        diff_text, m3 = _cell(list(a.values()) + list(b.values()), suffix,
                              cmp_.format(fmt, scale, suffix) + f" (n={cmp_.n})")
        mixed |= m3
        rows.append([name, ref_text, cmp_text, diff_text,
                     f"{cmp_.positives}/{cmp_.negatives}/{cmp_.ties}, p={p}"])
    return _render(headers, rows) + (f"\n\n{_MIXED_NOTE}" if mixed else "")


def _window_full_search(run: dict) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r["d_max"]) for r in run["trajectory"]
           if r["phase"] == "search" and r.get("d_max") is not None
           and r["d_max"] < 1.0]
    return [p[0] for p in pts], [p[1] for p in pts]


def elbow_table(runs: Sequence[dict]) -> str:
    """Per run: the d_max elbow (epoch, value) and the WORM trigger epoch.

    The elbow is fitted twice: over every epoch with a full window, and again
    without the first of them. That first window still holds the epoch-0
    mask; for the CNNs it is drawn from BatchNorm scales that all start equal
    (a tie-break), so its d_max sits near p in every run, and the drop after
    it can dominate the two-line fit and hide the later bend the paper's
    Fig. 1 describes.
    """
    rows = []
    for arm, arm_runs in _by_arm(runs).items():
        for r in arm_runs:
            xs, ys = _window_full_search(r)
            cells = []
            for found in (stats.elbow(xs, ys), stats.elbow(xs[1:], ys[1:])):
                cells += (["-", "-"] if found is None
                          else [f"{found[0]:.0f}", f"{found[1]:.3f}"])
            trig = next((t["epoch"] for t in r["trajectory"]
                         if t["phase"] == "search" and t.get("truncation_active")), None)
            rows.append([arm, str(r["seed"]), *cells,
                         "-" if trig is None else str(trig),
                         str(r["summary"].get("ticket_epoch"))])
    return _render(["arm", "seed", "elbow epoch", "elbow d_max",
                    "elbow epoch, first window left out",
                    "elbow d_max, first window left out",
                    "trigger epoch", "ticket epoch"], rows)
