"""A benchmark's result: the dict every bench returns, its Markdown and strict JSON."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

from benchmarks.machine import contention_note
from benchmarks.machine import environment

def result(name: str, rows: list[dict], notes: Iterable[str], env: dict | None = None,
           **extra) -> dict:
    """The dict every bench's ``run`` returns.

    Args:
      name: the bench's name (its module name without ``bench_``).
      rows: one flat dict per measured configuration.
      notes: sentences a reader needs to interpret the rows.
      env: ``environment()`` taken when the bench started (taken now if None).
      **extra: raw figures kept in the JSON only.

    Returns:
      {"name", "rows", "notes", "environment", ...extra}.
    """
    env = env or environment()
    notes = [n for n in notes if n]
    warning = contention_note(env)
    if warning:
        notes.insert(0, warning)
    return {"name": name, "rows": rows, "notes": notes, "environment": env, **extra}


def fmt(value: Any) -> str:
    """A table cell: 3 significant digits, thousands separators, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "/")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table of scalar row fields (lists and dicts stay in the JSON only).

    Args:
      rows: flat dicts.
      columns: column order; default every scalar key in order of first appearance.

    Returns:
      The table, or "(no rows)".
    """
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for row in rows:
            for key, value in row.items():
                if key not in columns and not isinstance(value, (list, tuple, dict)):
                    columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def to_markdown(res: dict, level: int = 3) -> str:
    """One bench's section: heading, machine, notes, table."""
    lines = [f"{'#' * level} {res.get('name', '?')}", ""]
    env = res.get("environment")
    if env:
        pk = env.get("packages", {})
        lines.append(f"Machine: {env['machine']}; load average {env['load_average']}, "
                     f"other processes' busy cores {env.get('others_busy_cores')}; "
                     f"jax {pk.get('jax')}, torch {pk.get('torch')}; "
                     f"{env['timestamp']}.")
        lines.append("")
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    if res.get("notes"):
        lines.append("")
    lines.append(markdown_table(res.get("rows", []), res.get("columns")))
    return "\n".join(lines) + "\n"


def _json_default(obj):
    # numpy scalars and arrays, tuples of them: anything with .tolist() or __float__.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__float__"):
        return float(obj)
    return str(obj)


def _strict(obj: Any) -> Any:
    # NaN and infinities are not JSON; strict readers (jq, browsers) reject them.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented, strict JSON (NaN -> null), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(_strict(json.loads(json.dumps(obj, default=_json_default))),
                      indent=2, allow_nan=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


CHILD_MARKER = "BENCH_CHILD_JSON "

def child_output(obj: Any) -> None:
    """Prints a child's result for :func:`run_child`."""
    # NaN may pass this hop (Python's json reads it back); write_json drops it.
    print(CHILD_MARKER + json.dumps(obj, default=_json_default), flush=True)
