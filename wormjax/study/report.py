"""The study report: Markdown tables and PNG figures from the results JSON alone."""

from __future__ import annotations

import os

from wormjax.study import figures
from wormjax.study import plan as plan_lib
from wormjax.study import results as results_lib
from wormjax.study import tables

__all__ = ["render", "write_report"]


def _machines(runs) -> list[str]:
    seen = []
    for r in runs:
        text = results_lib.machine_label(r)
        if text not in seen:
            seen.append(text)
    return seen


def _fmt_overrides(overrides: dict) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in sorted(overrides.items())) or "(none)"


def render(study: plan_lib.Study, data: dict, figure_paths: dict) -> str:
    """The report's Markdown; ``figure_paths`` maps experiment -> figure links."""
    runs = data["runs"]
    total_s = sum((r["summary"].get("times") or {}).get("total") or 0.0 for r in runs)
    total_flops = sum((r["summary"].get("flops") or {}).get("training_flops_spent")
                      or 0.0 for r in runs)
    out = [f"# Study `{study.name}`", "", study.description.strip(), "",
           f"Regenerate: `python -m wormjax.study report {study.name}` (from "
           f"`docs/results/{study.name}.json` alone); run missing units with "
           f"`python -m wormjax.study run {study.name}`.", "",
           f"{len(runs)} runs; compute: {total_s / 3600:.2f} h of run wall time, "
           f"{total_flops / 1e15:.2f} PFLOPs of training. Machines: "
           + ("; ".join(_machines(runs)) or "none yet") + ".", "",
           "Cells are mean ± sample sd (n = seeds). Paired differences are per "
           "seed (same initialisation and data order), with a two-sided 95% "
           "Student-t interval and an exact two-sided sign test.", ""]
    for e in study.experiments:
        mine = [r for r in runs if r["experiment"] == e.name]
        out += [f"## {e.name}" + (f" ({e.protocol})" if e.protocol else ""), ""]
        if e.description:
            out += [e.description, ""]
        out += [f"Settings: `{e.config}` {_fmt_overrides(e.overrides)}; seeds "
                f"{', '.join(map(str, e.seeds))}.", ""]
        if not mine:
            out += ["No finished runs yet.", ""]
            continue
        out += [tables.arms_table(mine), ""]
        for ref, cmp_ in study.pairs:
            table = tables.paired_table(mine, ref, cmp_)
            if table:
                out += [f"Paired: {cmp_} vs {ref}", "", table, ""]
        if any(t["phase"] == "search" for r in mine for t in r["trajectory"]):
            out += ["Mask-distance elbow per run (two-line fit over the epochs "
                    "with a full window, and again without the first of them, "
                    "whose d_max compares against the tie-broken epoch-0 mask) "
                    "and WORM trigger:", "",
                    tables.elbow_table(mine), ""]
        for link in figure_paths.get(e.name, ()):
            out += [f"![{os.path.basename(link)}]({link})", ""]
    out += _cross_sections(study, runs)
    return "\n".join(out).rstrip() + "\n"


def _cross_sections(study: plan_lib.Study, runs) -> list[str]:
    # Each arm is relabelled "experiment/variant" so that paired_table can
    # match the two experiments' runs seed by seed.
    out = []
    for ref, cmp_ in study.cross_pairs:
        picked = []
        for arm in (ref, cmp_):
            experiment, variant = plan_lib.split_arm(arm)
            picked += [dict(r, variant=arm) for r in runs
                       if r["experiment"] == experiment and r["variant"] == variant]
        table = tables.paired_table(picked, ref, cmp_)
        if table:
            if not out:
                out += ["## Across experiments", ""]
            out += [f"Paired: {cmp_} vs {ref}", "", table, ""]
    return out


def _thresholds(runs):
    s = next((r["summary"].get("stop_distance") for r in runs), None)
    trig = next((r["summary"].get("trigger_threshold") for r in runs
                 if r["summary"].get("trigger_threshold") is not None), None)
    return s, trig


def write_report(study: plan_lib.Study, data: dict, root: str) -> list[str]:
    """Writes the Markdown report and figures; returns the paths written."""
    fig_dir = os.path.join(root, "docs", "figures")
    written, links = [], {}
    for e in study.experiments:
        mine = [r for r in data["runs"] if r["experiment"] == e.name]
        if not mine:
            continue
        s, trig = _thresholds(mine)
        dist = os.path.join(fig_dir, f"{study.name}_{e.name}_distance.png")
        loss = os.path.join(fig_dir, f"{study.name}_{e.name}_loss.png")
        figures.distance_figure(mine, dist, f"{study.name} / {e.name}: mask distance",
                                s, trig)
        figures.loss_figure(mine, loss, f"{study.name} / {e.name}: train loss")
        written += [dist, loss]
        links[e.name] = [os.path.relpath(p, os.path.join(root, "docs", "results"))
                         for p in (dist, loss)]
    md = os.path.join(root, "docs", "results", f"{study.name}.md")
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md, "w", encoding="utf-8") as f:
        f.write(render(study, data, links))
    return [md] + written
