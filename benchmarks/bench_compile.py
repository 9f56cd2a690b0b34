"""Compile time and count per jitted function over a short full run, and peak memory.

Runs ``wormjax.pipeline.experiment.run_experiment`` on the digits quick-start config (EB Train
and WORM arms, search -> prune -> retrain) at a reduced size in a temporary workdir,
in a fresh subprocess so that neither earlier compilations nor earlier benches' memory
leak into the figures. JAX's own monitoring events give the trace, lowering and backend
compile seconds of every jitted function by name; the run's payload gives wormjax's
``compile_counts`` and ``compile_seconds`` (its up-front warm-up). The run is repeated
with JAX's persistent compilation cache, empty then warm, to size what a re-run of an
experiment (resume, another seed, the next variant of a sweep) would save.

  python -m benchmarks.bench_compile --size small
"""

from __future__ import annotations

import sys
import tempfile
import time

from benchmarks import common
from benchmarks import machine
from benchmarks import output

NAME = "compile"
MIN_ROW_SECONDS = 0.25
_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
           "/jax/core/compile/backend_compile_duration": "backend_compile_s"}


def quickstart_config(size: str):
    """The quick-start config, cut down for ``size`` (large: unchanged)."""
    from configs import quickstart  # noqa: PLC0415

    c = quickstart.get_config()
    c.progress_bar = False
    if size in ("tiny", "small"):
        c.model.width = 0.0625 if size == "tiny" else 0.125
        c.data.train_limit = 256 if size == "tiny" else 640
        c.data.eval_limit = 128
        c.optim.eval_batch_size = 64
        c.search.max_epochs = 2 if size == "tiny" else 4
        c.retrain.max_epochs = 1 if size == "tiny" else 2
        c.log_every_steps = 8
    return c


def _child(size: str, cache_dir: str = "") -> dict:
    """Runs the experiment in this (fresh) process and returns the raw figures.

    Args:
      size: the config size.
      cache_dir: if set, JAX's persistent compilation cache lives there (every
        executable cached, however quick to compile).
    """
    import jax  # noqa: PLC0415
    from wormjax.pipeline import experiment  # noqa: PLC0415

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    per_fn: dict[str, dict] = {}

    def listen(event, duration, **kwargs):
        column = _EVENTS.get(event)
        if column is None:
            return
        name = str(kwargs.get("fun_name", "?"))
        # Lowering and compile events name the function "jit(f)", tracing names it "f".
        if name.startswith("jit(") and name.endswith(")"):
            name = name[4:-1]
        entry = per_fn.setdefault(name,
                                  {"traces": 0, "compiles": 0, "trace_s": 0.0,
                                   "lower_s": 0.0, "backend_compile_s": 0.0})
        entry[column] += duration
        if column == "trace_s":
            entry["traces"] += 1
        elif column == "backend_compile_s":
            entry["compiles"] += 1

    hwm_start = machine.vm_hwm_mb()
    jax.monitoring.register_event_duration_secs_listener(listen)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        payload = experiment.run_experiment(quickstart_config(size), workdir,
                                            print_fn=lambda *a, **k: None)
    wall = time.perf_counter() - start
    jax.monitoring.unregister_event_duration_listener(listen)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "per_function": per_fn,
        "compile_counts": payload["compile_counts"],
        "compile_seconds": payload["compile_seconds"],
        "wall_s": wall,
        "steps_per_epoch": payload["steps_per_epoch"],
        "runs": [{"variant": r.get("variant"), "times": r.get("times")}
                 for r in payload["runs"]],
        "vm_hwm_after_imports_mb": hwm_start,
        "vm_hwm_mb": machine.vm_hwm_mb(),
        "ru_maxrss_mb": machine.peak_rss_mb(),
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        "device_bytes_limit": stats.get("bytes_limit"),
    }


def _mib(value) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _spawn(size: str, cache_dir: str = "") -> dict:
    """Runs ``_child`` in a fresh interpreter and returns its figures."""
    return common.run_child("benchmarks.bench_compile", ["--child", size, cache_dir])


def _compile_total(raw: dict) -> float:
    return sum(e["trace_s"] + e["lower_s"] + e["backend_compile_s"]
               for e in raw["per_function"].values())


def run(size: str = "small") -> dict:
    """Runs the short experiment in subprocesses and tabulates compilation per function.

    Three fresh processes: no compilation cache; then JAX's persistent compilation
    cache, empty (cold) and filled by the previous run (warm).

    Args:
      size: "tiny", "small" (width 0.125, 640 digits, 4 search + 2 retrain epochs at
        most) or "large" (the quick-start config as shipped).

    Returns:
      {"name", "rows", "notes", "environment", "raw"}.
    """
    env = machine.environment()
    common.check_size(size)
    raw = _spawn(size)
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = _spawn(size, cache_dir)
        warm = _spawn(size, cache_dir)
    rows, other = [], None
    for fun, e in sorted(raw["per_function"].items(),
                         key=lambda kv: -(kv[1]["backend_compile_s"] + kv[1]["trace_s"])):
        cached = warm["per_function"].get(fun)
        row = {"function": fun, **e,
               "total_s": e["trace_s"] + e["lower_s"] + e["backend_compile_s"],
               "warm_cache_total_s": None if cached is None else
               cached["trace_s"] + cached["lower_s"] + cached["backend_compile_s"]}
        if row["total_s"] >= MIN_ROW_SECONDS:
            rows.append(row)
            continue
        # Eager ops (copies, casts, key folding) each compile once in milliseconds.
        if other is None:
            other = {"function": "other (small)", "traces": 0, "compiles": 0,
                     "trace_s": 0.0, "lower_s": 0.0, "backend_compile_s": 0.0,
                     "total_s": 0.0, "warm_cache_total_s": 0.0, "functions": 0}
        other["functions"] += 1
        for key in ("traces", "compiles", "trace_s", "lower_s", "backend_compile_s",
                    "total_s", "warm_cache_total_s"):
            other[key] += row[key] or 0.0
    if other:
        other["function"] = f"other ({other.pop('functions')} eager ops < {MIN_ROW_SECONDS} s)"
        rows.append(other)
    total = sum(r["total_s"] for r in rows)
    device = ("n/a (CPU: memory_stats() is None)" if raw["device_peak_bytes"] is None
              else f"{raw['device_peak_bytes'] / 2**20:,.0f} MiB peak of "
                   f"{(raw['device_bytes_limit'] or 0) / 2**20:,.0f} MiB")
    times = "; ".join(
        f"{r['variant']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in (r["times"] or {}).items())
        for r in raw["runs"])
    notes = [
        f"Run: configs/quickstart.py at size {size} (digits), arms EB Train + WORM, "
        f"{raw['steps_per_epoch']} steps/epoch; wall {raw['wall_s']:.1f} s in a fresh "
        "process.",
        f"wormjax payload: compile_counts {raw['compile_counts']}; compile_seconds "
        f"(up-front warm-up of every step) {raw['compile_seconds']:.1f} s.",
        f"All jitted functions (JAX monitoring events): {total:.1f} s of tracing + "
        "lowering + backend compilation, by function below ('compiles' = backend "
        "compilations; a function compiled twice has two).",
        f"Phase wall times: {times}.",
        f"JAX persistent compilation cache (jax_compilation_cache_dir, every entry "
        f"cached): compile total {_compile_total(raw):.1f} s without it, "
        f"{_compile_total(cold):.1f} s with an empty cache, {_compile_total(warm):.1f} s "
        f"with the cache the previous run filled (run wall {raw['wall_s']:.1f} / "
        f"{cold['wall_s']:.1f} / {warm['wall_s']:.1f} s); column warm_cache_total_s.",
        f"Peak host RSS of the run's process: {_mib(raw['vm_hwm_mb'])} (/proc VmHWM; "
        f"{_mib(raw['vm_hwm_after_imports_mb'])} after imports); getrusage ru_maxrss "
        f"{_mib(raw['ru_maxrss_mb'])} (Linux carries it over from the parent at fork, "
        f"so it is at least the launching process's size); device memory: {device}.",
    ]
    return output.result(NAME, rows, notes, env, raw=raw, raw_cache_cold=cold,
                         raw_cache_warm=warm,
                         columns=["function", "traces", "compiles", "trace_s", "lower_s",
                                  "backend_compile_s", "total_s", "warm_cache_total_s"])


def main() -> None:
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--child":
        cache_dir = sys.argv[3] if len(sys.argv) == 4 else ""
        output.child_output(_child(sys.argv[2], cache_dir))
        return
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
