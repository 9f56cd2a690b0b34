"""Run outputs: the metrics log, progress lines and the run summary.

The training loop hands this module plain dicts (docs/algorithm.md section 5):
epoch records, step records and one run summary per variant and seed. They
become ``metrics.jsonl`` (plus TensorBoard event files), one-line progress
descriptions, and an atomically written ``summary.json``. The paper's tables
are in ``wormjax.pipeline.tables`` and the figures in ``wormjax.pipeline.plots``. Pure Python and numpy; JAX is imported only to describe the
devices in ``environment_info``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import uuid
import warnings
from typing import Any

from wormjax import _json as _json_lib

__all__ = [
    "MetricsWriter",
    "read_records",
    "epoch_line",
    "write_summary",
    "environment_info",
]

_EPOCH_SCALARS = ("d_max", "d_avg", "ratio", "truncation_active", "train_loss",
                  "train_accuracy", "eval_accuracy", "eval_loss", "epoch_time")
_tensorboard_warned = False


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
        self._file.write(json.dumps(record, default=_json_lib.default) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._mirror(record)

    def rewind(self, keep: int | None) -> None:
        """Drops this run's records after its first ``keep`` (a resume logs them again).

        ``metrics.jsonl`` is rewritten without them (other runs' records and
        their order are kept) and this run's TensorBoard events are written
        anew from the records kept, so neither holds a record twice.

        Args:
          keep: records of this variant and seed to keep; None keeps all (a
            checkpoint from before the count was stored).
        """
        if keep is None:
            return
        self._file.flush()
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept, mine = [], []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a partial line a kill left behind
            if (record.get("variant"), record.get("seed")) == (self.variant, self.seed):
                if len(mine) >= keep:
                    continue
                mine.append(record)
            kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) == len(lines):
            return
        self._file.close()
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
        if self._tb is not None:
            self._tb.close()
            for name in os.listdir(self.tensorboard_dir):
                if name.startswith("events.out.tfevents"):
                    os.remove(os.path.join(self.tensorboard_dir, name))
            self._tb = _open_tensorboard(self.tensorboard_dir)
            for record in mine:
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
    return json.dumps(payload, indent=2, default=_json_lib.default)


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
    # Not mkstemp: its 0600 would make summary.json and config.json private; a
    # fresh name opened with 0666 gets the umask's mode, like any other output.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
