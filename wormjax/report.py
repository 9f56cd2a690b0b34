"""Run outputs: the metrics log, the paper's result tables and the run summary.

The training loop hands this module plain dicts (ALGORITHM.md section 5):
epoch records, step records and one run summary per variant and seed. They
become ``metrics.jsonl`` (plus TensorBoard event files), the paper's Tables
I-VI as text, and an atomically written ``summary.json``. The figures live in
``wormjax.plots``. Pure Python and numpy; JAX is imported only to describe the
devices in ``environment_info``.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import math
import os
import platform
import tempfile
import warnings
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "MetricsWriter",
    "read_records",
    "comparison_table",
    "sweep_table",
    "glue_table",
    "epoch_line",
    "write_summary",
    "environment_info",
]

_EPOCH_SCALARS = ("d_max", "d_avg", "ratio", "truncation_active", "train_loss",
                  "train_accuracy", "eval_accuracy", "eval_loss", "epoch_time")
_tensorboard_warned = False


def _json_default(obj: Any) -> Any:
    # numpy and jax scalars/arrays both expose tolist(); ConfigDicts expose to_dict().
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def _open_tensorboard(logdir: str):
    global _tensorboard_warned
    try:
        import tensorboardX  # pylint: disable=import-outside-toplevel
    except ImportError:
        # TensorBoard is a convenience mirror of metrics.jsonl; a run must not die for it.
        if not _tensorboard_warned:
            warnings.warn("tensorboardX is not installed; skipping TensorBoard event files.")
            _tensorboard_warned = True
        return None
    return tensorboardX.SummaryWriter(logdir=logdir)


class MetricsWriter:
    """Appends records to ``<workdir>/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Epoch records go to ``<phase>/<name>`` tags (``search/d_max``, ``search/d_avg``,
    ``search/ratio``, ``retrain/eval_accuracy``, ...) at step = epoch; step records go
    to ``<phase>/train/loss`` and ``<phase>/train/accuracy`` at the phase's global step.
    The phase is part of every tag because both phases count epochs and steps from zero.

    Args:
      workdir: run directory; created if missing.
      variant: variant name, filled into records that lack one.
      seed: seed, filled into records that lack one.
      tensorboard: set False to skip the event files.
    """

    def __init__(self, workdir: str, variant: str, seed: int, *, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.variant, self.seed = variant, seed
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
        # A crash mid-write leaves a partial last line; start on a fresh line so the
        # first record of the resumed run is not glued onto it.
        if self._file.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._file.write("\n")
        self.tensorboard_dir = os.path.join(workdir, "tensorboard", f"{variant}_seed{seed}")
        self._tb = _open_tensorboard(self.tensorboard_dir) if tensorboard else None

    def write(self, record: dict) -> None:
        """Appends one record (flushed at once) and mirrors its scalars.

        Args:
          record: an epoch or step record; numpy/jax scalars are converted.
        """
        record = {"variant": self.variant, "seed": self.seed, **record}
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._mirror(record)

    def _mirror(self, record: dict) -> None:
        phase = record.get("phase", "train")
        if record.get("kind") == "step":
            scalars = {"train/loss": record.get("loss"), "train/accuracy": record.get("accuracy")}
            step = record.get("step", 0)
        else:
            scalars = {name: record.get(name) for name in _EPOCH_SCALARS}
            step = record.get("epoch", 0)
        for name, value in scalars.items():
            if value is not None:
                self._tb.add_scalar(f"{phase}/{name}", float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        """Closes the log and the event file; safe to call twice."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str, kind: str | None = None) -> list[dict]:
    """Reads a metrics.jsonl back, skipping lines a crash left half written.

    Args:
      path: the jsonl file.
      kind: keep only records of this kind ("epoch", "step"); None keeps all.

    Returns:
      The records in file order.
    """
    records, bad = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A partial line sits at the end of a crashed run; after a resume it
                # sits in the middle, so it is skipped wherever it is, with a warning.
                bad.append(number)
                continue
            if kind is None or record.get("kind") == kind:
                records.append(record)
    if bad:
        warnings.warn(f"{path}: skipped unreadable line(s) {bad}")
    return records


# --- Tables -----------------------------------------------------------------


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


def _count(values: Sequence[float]) -> str:
    # Epoch counts: integers for one seed (as the paper prints them), one decimal for a mean.
    if len(values) == 1 and float(values[0]).is_integer():
        return str(int(values[0]))
    return _stat(values, ".1f")


def _pct(values: Sequence[float], sign: bool = False) -> str:
    return _stat(values, ".2f", 100.0, "%", sign)


def _seconds(values: Sequence[float]) -> str:
    return _stat(values, ".0f", suffix="s")


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


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]], notes=()) -> str:
    """A Markdown pipe table, padded so it also reads well in a terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out + [n for n in notes if n])


def _not_reached_note(summaries: Sequence[dict]) -> str:
    if all(s.get("restore_epochs") is not None for s in summaries):
        return ""
    return ("Restore epochs: mean over the runs that reached the target; '>N' / '>max' "
            "counts the runs that did not within the retraining budget (excluded).")


def comparison_table(summaries: Sequence[dict], max_retrain_epochs: int | None = None) -> str:
    """EB Train vs WORM in the layout of the paper's Tables II and III.

    Args:
      summaries: run summaries; one row per variant, mean ± sample std over seeds.
      max_retrain_epochs: shown as '>N' for runs that never reached the target.

    Returns:
      The table as a string.
    """
    groups = _group(summaries, "variant")
    labels = _labels(groups)
    headers = ["Algorithm", "Ticket Search Epoch Count", "Pre-Pruned Acc.", "Post-Prune Acc.",
               "Retrain Acc. after One Epoch", _restore_header(summaries), "Total Time",
               "Converged"]
    rows = [[labels[v], _count(_values(runs, "ticket_epoch")),
             _pct(_values(runs, "pre_prune_accuracy")),
             _pct(_values(runs, "post_prune_accuracy")),
             _pct(_values(runs, "retrain_accuracy_after_one_epoch")),
             _restore(runs, max_retrain_epochs),
             _seconds(_values(runs, _total_time)),
             _converged(runs)] for v, runs in groups.items()]
    return _render(headers, rows, [_not_reached_note(summaries)])


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
    headers = ["Truncation Parameter (r)", "Ticket Search Epoch Count", "Post-Prune Accuracy",
               _restore_header(chosen), "Total Execution Time", "Converged"]
    rows = [[f"r = {r:g}", _count(_values(runs, "ticket_epoch")),
             _pct(_values(runs, "post_prune_accuracy")), _restore(runs, max_retrain_epochs),
             _seconds(_values(runs, _total_time)),
             _converged(runs)] for r, runs in sorted(by_ratio.items(), reverse=True)]
    return _render(headers, rows, [_not_reached_note(chosen)])


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
    metrics = [
        ("Pre-Pruned Accuracy", lambda rs: _pct(_values(rs, "pre_prune_accuracy"))),
        ("Epochs to Prune", lambda rs: _count(_values(rs, "ticket_epoch"))),
        ("Pruned Accuracy", lambda rs: _pct(_values(rs, "post_prune_accuracy"))),
        ("Accuracy after 1 Epoch of Retraining",
         lambda rs: _pct(_values(rs, "retrain_accuracy_after_one_epoch"))),
        ("Accuracy Gain after 1 Epoch", lambda rs: _pct(_values(rs, _gain), sign=True)),
        ("Time to Prune and Re-train",
         lambda rs: _seconds(_values(rs, _total_time))),
        ("Converged", _converged),
    ]
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
        blocks.append(_render([labels[variant]] + names, rows))
    return "\n\n".join(blocks)


def epoch_line(record: dict) -> str:
    """A compact one-line description of an epoch (or step) record, for progress bars.

    Args:
      record: an epoch or step record.

    Returns:
      e.g. "search e3 loss 0.512 acc 81.2% eval 80.1% d_max 0.142 d_avg 0.081 trunc on r=0.003".
    """
    parts = [f"{record.get('phase', '?')} e{record.get('epoch', '?')}"]

    def add(fmt: str, value, pct: bool = False):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(fmt.format(100 * value if pct else value))

    add("loss {:.3f}", record.get("train_loss", record.get("loss")))
    add("acc {:.1f}%", record.get("train_accuracy", record.get("accuracy")), pct=True)
    add("eval {:.1f}%", record.get("eval_accuracy"), pct=True)
    add("d_max {:.3f}", record.get("d_max"))
    add("d_avg {:.3f}", record.get("d_avg"))
    if "truncation_active" in record:
        active = record["truncation_active"]
        parts.append(f"trunc {'on' if active else 'off'}"
                     + (f" r={record.get('ratio', 1.0):g}" if active else ""))
    add("{:.1f}s", record.get("epoch_time"))
    return " ".join(parts)


# --- Summary file -------------------------------------------------------------


def to_json(payload: Any) -> str:
    """JSON text of ``payload``, converting numpy/jax values and ConfigDicts."""
    return json.dumps(payload, indent=2, default=_json_default)


def write_summary(path: str, payload: dict) -> None:
    """Writes ``payload`` as JSON atomically: a reader sees the old file or the new one.

    Args:
      path: destination, e.g. ``<workdir>/summary.json``.
      payload: anything JSON-able (numpy/jax scalars and ConfigDicts are converted).

    Raises:
      TypeError: for an object that cannot be serialised; the old file is untouched.
    """
    # Serialise before touching the disk so a bad payload never leaves debris.
    text = to_json(payload) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment_info() -> dict:
    """Versions, devices and CPU of this process, for the run summary.

    Returns:
      {"python", "packages": {name: version or None}, "devices": {"platform",
      "device_kind", "count"} or {"error"}, "cpu", "os"}.
    """
    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    info = {"python": platform.python_version(),
            "packages": {n: _package_version(n) for n in names},
            "cpu": _cpu_model(), "os": platform.platform()}
    try:
        import jax  # pylint: disable=import-outside-toplevel
        devices = jax.devices()
        info["devices"] = {"platform": devices[0].platform,
                           "device_kind": devices[0].device_kind, "count": len(devices)}
    except Exception as e:  # pylint: disable=broad-except
        # A summary without device details beats a run that dies at the last step.
        info["devices"] = {"error": f"{type(e).__name__}: {e}"}
    return info
