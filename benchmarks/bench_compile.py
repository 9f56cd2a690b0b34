"""Compile time and count per jitted function over a short full run, and peak memory.

Runs ``wormjax.experiment.run_experiment`` on the digits quick-start config (EB Train
and WORM arms, search -> prune -> retrain) at a reduced size in a temporary workdir,
in a fresh subprocess so that neither earlier compilations nor earlier benches' memory
leak into the figures. JAX's own monitoring events give the trace, lowering and backend
compile seconds of every jitted function by name; the run's payload gives wormjax's
``compile_counts`` and ``compile_seconds`` (its up-front warm-up).

  python -m benchmarks.bench_compile --size small
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import common

NAME = "compile"
_MARKER = "BENCH_COMPILE_JSON "
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


def _child(size: str) -> dict:
    """Runs the experiment in this (fresh) process and returns the raw figures."""
    import jax  # noqa: PLC0415
    from wormjax import experiment  # noqa: PLC0415

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

    rss_start = common.peak_rss_mb()
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
        "rss_after_imports_mb": rss_start,
        "peak_rss_mb": common.peak_rss_mb(),
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        "device_bytes_limit": stats.get("bytes_limit"),
    }


def run(size: str = "small") -> dict:
    """Runs the short experiment in a subprocess and tabulates compilation per function.

    Args:
      size: "tiny", "small" (width 0.125, 640 digits, 4 search + 2 retrain epochs at
        most) or "large" (the quick-start config as shipped).

    Returns:
      {"name", "rows", "notes", "environment", "raw"}.
    """
    env = common.environment()
    common.check_size(size)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_compile", "--child", size],
        cwd=common.REPO_ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": common.REPO_ROOT + os.pathsep
             + os.environ.get("PYTHONPATH", "")})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench_compile child failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    raw = json.loads(lines[-1][len(_MARKER):])
    rows, other = [], None
    for fun, e in sorted(raw["per_function"].items(),
                         key=lambda kv: -(kv[1]["backend_compile_s"] + kv[1]["trace_s"])):
        row = {"function": fun, **e,
               "total_s": e["trace_s"] + e["lower_s"] + e["backend_compile_s"]}
        if row["total_s"] >= MIN_ROW_SECONDS:
            rows.append(row)
            continue
        # Eager ops (copies, casts, key folding) each compile once in milliseconds.
        if other is None:
            other = {"function": "other (small)", "traces": 0, "compiles": 0,
                     "trace_s": 0.0, "lower_s": 0.0, "backend_compile_s": 0.0,
                     "total_s": 0.0, "functions": 0}
        other["functions"] += 1
        for key in ("traces", "compiles", "trace_s", "lower_s", "backend_compile_s",
                    "total_s"):
            other[key] += row[key]
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
        f"Peak host RSS {raw['peak_rss_mb']:,.0f} MiB (after imports "
        f"{raw['rss_after_imports_mb']:,.0f} MiB); device memory: {device}.",
    ]
    return common.result(NAME, rows, notes, env, raw=raw,
                         columns=["function", "traces", "compiles", "trace_s", "lower_s",
                                  "backend_compile_s", "total_s"])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(_MARKER + json.dumps(_child(sys.argv[2])), flush=True)
        return
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
