"""Shared benchmark plumbing: sizes, the machine's description, timing statistics, output.

Every bench module exposes ``run(size) -> {"name", "rows", "notes", ...}`` and a
``main()`` built with :func:`cli`, so ``run_all`` can aggregate any of them and each
one also runs alone (``python -m benchmarks.bench_train_step --size small``).

Timing rules used throughout: warm-up (compilation included) is never timed; a timed
sample is a window of many steps closed by one ``jax.block_until_ready``; figures are
medians with the interquartile range and min/max over repeated windows; A/B ratios
come from windows interleaved in one process, the order swapped every repetition so
that slow drifts of a shared machine hit both arms alike.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/ is a top-level package beside wormjax/; make it importable from anywhere.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

SIZES = ("tiny", "small", "large")
SHARED_DATA_ROOTS = (os.environ.get("WORMJAX_SHARED_DIR"),
                     os.path.join(os.path.dirname(REPO_ROOT), "shared"), "/work/shared")

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers",
             "tokenizers", "wormjax")

# Step times measured in this process, so that later benches (EB share, pipeline
# ratio, roofline) reuse bench_train_step's figures instead of re-measuring.
STEP_CACHE: dict[str, dict] = {}


def check_size(size: str) -> str:
    """Validates a size name.

    Args:
      size: "tiny" (smoke tests, seconds), "small" (CPU validation, minutes) or
        "large" (the full grid, for a dedicated machine).

    Returns:
      The size.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return size


def shared_data(*parts: str) -> str | None:
    """A path under the shared data folder (``shared/data/...``) if it exists, else None."""
    for root in SHARED_DATA_ROOTS:
        if root:
            candidate = os.path.join(root, "data", *parts)
            if os.path.exists(candidate):
                return candidate
    return None


# -- the machine ---------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_label() -> str:
    """One line naming what the figures were measured on: GPU card or CPU model."""
    import jax  # noqa: PLC0415 - keeps `import benchmarks.common` cheap

    devices = jax.devices()
    if devices[0].platform == "cpu":
        return f"CPU: {cpu_model()}, {usable_cores()} cores"
    return f"{devices[0].platform.upper()}: {devices[0].device_kind} x{len(devices)}"


def _busy_jiffies() -> tuple[int, int]:
    # First line of /proc/stat: user nice system idle iowait irq softirq steal (all CPUs).
    with open("/proc/stat", encoding="utf-8") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def _own_jiffies() -> int:
    with open("/proc/self/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of every thread


def others_busy_cores(interval: float = 0.5) -> float | None:
    """Cores kept busy by OTHER processes over a short sample, or None off Linux.

    The load average counts this process's own threads too (a bench that just ran
    keeps it up for a minute), so it cannot tell a neighbour from ourselves.
    """
    try:
        busy0, total0 = _busy_jiffies()
        own0 = _own_jiffies()
        time.sleep(interval)
        busy1, total1 = _busy_jiffies()
        own1 = _own_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") * interval
    all_cores = (total1 - total0) / ticks  # jiffies of all CPUs over the interval
    busy_cores = all_cores * (busy1 - busy0) / max(total1 - total0, 1)
    return round(max(0.0, busy_cores - (own1 - own0) / ticks), 2)


def environment() -> dict:
    """Machine, library versions and load of this process, attached to every result."""
    import jax  # noqa: PLC0415

    device = jax.devices()[0]
    return {
        "machine": machine_label(),
        "cpu": cpu_model(),
        "usable_cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": len(jax.devices()),
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "others_busy_cores": others_busy_cores(),
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def is_contended(env: dict) -> bool:
    """Whether other processes used more than a quarter of the usable cores."""
    others = env.get("others_busy_cores")
    if others is None:  # no /proc: fall back on the (self-inclusive) load average
        return env["load_average"][0] > 0.75 * env["usable_cores"]
    return others > 0.25 * env["usable_cores"]


def contention_note(env: dict) -> str | None:
    """A warning when other processes were competing for the cores."""
    if is_contended(env):
        return (f"CONTENDED: other processes kept {env.get('others_busy_cores')} of "
                f"{env['usable_cores']} usable cores busy when this bench started (1-min "
                f"load average {env['load_average'][0]}); absolute timings are "
                "pessimistic and noisy, paired ratios less so.")
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size (``getrusage`` ru_maxrss), in MiB.

    Linux carries ru_maxrss across fork and exec, so in a child process it is at
    least the parent's size at the fork; see :func:`vm_hwm_mb` for the child alone.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def vm_hwm_mb() -> float | None:
    """Peak RSS of this process's own address space (/proc VmHWM), in MiB, or None."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # reported in kB
    except OSError:
        pass
    return None


# -- timing --------------------------------------------------------------------------

def summarize(samples: Sequence[float]) -> dict:
    """Median, quartiles and extremes of repeated measurements.

    Args:
      samples: one number per timed repetition.

    Returns:
      {"n", "median", "q1", "q3", "iqr", "min", "max"}; quartiles are inclusive
      (equal to min/max for two samples).
    """
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError("summarize needs at least one sample")
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"n": len(xs), "median": statistics.median(xs), "q1": q1, "q3": q3,
            "iqr": q3 - q1, "min": min(xs), "max": max(xs)}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes; ``fn`` must block until its work is done."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Times ``reps`` calls of ``fn`` after ``warmup`` untimed ones.

    Args:
      fn: one timed window; must block until its work is done.
      reps: timed repetitions.
      warmup: untimed calls first (compilation, caches, thread pools).

    Returns:
      Seconds per call, one per repetition.
    """
    for _ in range(warmup):
        fn()
    return [timed(fn) for _ in range(reps)]


def interleave(fns: Sequence[Callable[[], Any]], reps: int,
               warmup: int = 1) -> list[list[float]]:
    """Interleaved timing of several arms, the order rotated every repetition.

    Args:
      fns: one window per arm (each blocks when done).
      reps: timed rounds; round i runs the arms starting from arm ``i % len(fns)``,
        so each arm goes first equally often and a slow drift of a shared machine
        hits every arm alike.
      warmup: untimed rounds first.

    Returns:
      Seconds per window, one list per arm; index i of every list is round i.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(reps):
        for j in range(len(fns)):
            arm = (i + j) % len(fns)
            times[arm].append(timed(fns[arm]))
    return times


def paired(fn_a: Callable[[], Any], fn_b: Callable[[], Any], reps: int,
           warmup: int = 1) -> tuple[list[float], list[float]]:
    """Interleaved A/B timing: A then B, then B then A, and so on.

    Args:
      fn_a: arm A's window (blocks when done).
      fn_b: arm B's window.
      reps: timed pairs.
      warmup: untimed pairs first.

    Returns:
      (seconds of A, seconds of B), index i of both from the same pair.
    """
    times_a, times_b = interleave([fn_a, fn_b], reps, warmup)
    return times_a, times_b


def ratio_stats(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Statistics of the per-pair ratios ``numerator[i] / denominator[i]``."""
    return summarize([n / d for n, d in zip(numerator, denominator)])


def steps_for_window(step_seconds: float, target_seconds: float, min_steps: int = 2,
                     max_steps: int = 500) -> int:
    """How many steps make one timed window of about ``target_seconds``.

    Long windows make the one host sync per window negligible; the floor keeps at
    least two dispatches in flight even for slow steps.
    """
    if not step_seconds > 0:
        return min_steps
    return int(min(max_steps, max(min_steps, math.ceil(target_seconds / step_seconds))))


# -- results and output --------------------------------------------------------------

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


def run_child(module: str, args: Sequence[str], env: dict | None = None) -> Any:
    """Runs ``python -m <module> <args>`` in a fresh interpreter and returns its result.

    For figures that need a process of their own: XLA flags (read once at start-up),
    compilation from a cold start, memory peaks. The child prints one line
    ``CHILD_MARKER + json`` (see :func:`child_output`).

    Args:
      module: e.g. "benchmarks.bench_compile".
      args: its command-line arguments.
      env: variables added to this process's environment.

    Returns:
      The decoded JSON.
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False, env=full_env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {module} {' '.join(args)} failed (rc "
                           f"{proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER):])


def child_output(obj: Any) -> None:
    """Prints a child's result for :func:`run_child`."""
    # NaN may pass this hop (Python's json reads it back); write_json drops it.
    print(CHILD_MARKER + json.dumps(obj, default=_json_default), flush=True)


def cli(run: Callable[[str], dict], description: str) -> None:
    """The command line of one bench: ``--size`` and an optional ``--out`` folder.

    Args:
      run: the bench's ``run(size)``.
      description: shown by ``--help``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="tiny: seconds (smoke test); small: CPU validation; "
                             "large: the full grid")
    parser.add_argument("--out", default="",
                        help="folder for <name>.json and <name>.md (else print only)")
    args = parser.parse_args()
    res = run(args.size)
    text = to_markdown(res)
    print(text)
    if args.out:
        write_json(os.path.join(args.out, f"{res['name']}.json"), res)
        with open(os.path.join(args.out, f"{res['name']}.md"), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}/{res['name']}.json and .md")
