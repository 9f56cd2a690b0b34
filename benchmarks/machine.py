"""What a benchmark ran on: the machine, library versions, load and memory peaks.

``environment()`` is attached to every result; ``contention_note`` flags figures
taken while other processes kept cores busy.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import resource
import sys
import time

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers",
             "tokenizers", "wormjax")


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
