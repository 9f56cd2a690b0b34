"""The committed results of a study: one compact JSON, merged unit by unit.

``docs/results/<study>.json`` holds every finished run of the study (variant,
seed, protocol, the summary's metrics, the per-epoch trajectory, FLOPs, wall
times and the machine). It is the study's only durable output: the report is
regenerated from it alone, and a later ``run`` skips the units it holds, so a
study can be run in chunks on different machines and committed after each.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Iterable

from wormjax import _json as _json_lib

__all__ = ["load", "save", "run_entry", "merge", "units_done", "trained_search",
           "TRAJECTORY_FIELDS"]

FORMAT_VERSION = 1
# Per-epoch fields worth keeping; the rest of a metrics record is derivable.
TRAJECTORY_FIELDS = ("phase", "epoch", "d_max", "d_avg", "truncation_active", "ratio",
                     "train_loss", "eval_accuracy", "eval_f1", "epoch_time")
_MACHINE_FIELDS = ("cpu", "devices", "os", "python", "packages")


def load(path: str, study_name: str) -> dict:
    """The results file at ``path``, or an empty one for ``study_name``."""
    if not os.path.exists(path):
        return {"format": FORMAT_VERSION, "study": study_name, "runs": []}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"study results {path} are unreadable ({err}); restore it "
                         "from git or move it away to start over") from None
    if data.get("study") != study_name or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path} holds results of study {data.get('study')!r}, "
                         f"not {study_name!r}")
    return data


def save(path: str, data: dict) -> None:
    """Writes ``data`` atomically (a crash leaves the previous file intact)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = dict(data, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    data["runs"] = sorted(data["runs"], key=_key)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True, allow_nan=False,
                      default=_json_lib.default)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _finite(value):
    # JSON has no NaN or infinity; a diverged metric is recorded as null
    # (an inf left in would make save() refuse a finished unit's rows).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def machine_label(run: dict) -> str:
    """The machine a results row ran on, in words: CPU, then devices (if any)."""
    m = run.get("machine") or {}
    dev = m.get("devices") or {}
    text = m.get("cpu") or "unknown CPU"
    if dev.get("platform"):
        text += f"; {dev['count']} x {dev['platform']} {dev.get('device_kind', '')}"
    return text.strip()


def _key(run: dict) -> tuple:
    return (run["experiment"], run["variant"], run["seed"])


def run_entry(summary: dict, *, experiment: str, protocol: str, settings: dict,
              machine: dict) -> dict:
    """The compact JSON row of one run summary (``run.summary()``)."""
    trajectory = [{k: r.get(k) for k in TRAJECTORY_FIELDS}
                  for r in summary.get("trajectory", [])]
    metrics = {k: v for k, v in summary.items() if k != "trajectory"}
    return _finite({
        "experiment": experiment, "protocol": protocol,
        "variant": summary["variant"], "seed": int(summary["seed"]),
        "settings": settings, "summary": metrics, "trajectory": trajectory,
        "machine": {k: machine.get(k) for k in _MACHINE_FIELDS},
    })


def merge(data: dict, entries: Iterable[dict]) -> dict:
    """``data`` with ``entries`` added; an entry replaces one with its key."""
    runs = {_key(r): r for r in data["runs"]}
    for entry in entries:
        runs[_key(entry)] = entry
    return dict(data, runs=list(runs.values()))


def units_done(data: dict) -> dict[tuple[str, int], set[str]]:
    """(experiment, seed) -> the variants the results already hold."""
    done: dict[tuple[str, int], set[str]] = {}
    for r in data["runs"]:
        done.setdefault((r["experiment"], r["seed"]), set()).add(r["variant"])
    return done


def trained_search(run: dict) -> list[dict]:
    """The run's search records of epochs that trained, in order.

    The record of the update that drew the ticket trains nothing (no loss);
    its truncation flag is the search state's, which stays on once fired, so
    counting it would add an epoch that WORM never truncated.
    """
    return [r for r in run.get("trajectory", [])
            if r.get("phase") == "search" and r.get("train_loss") is not None]

