"""Where a train step's time goes, by XLA operation kind, from a JAX profiler trace.

Runs the library's compiled train step (bench ``train_step``'s workloads) under
``jax.profiler`` for a few steps, reads the trace back with
``jax.profiler.ProfileData`` and adds up the time of every XLA operation
(thunk) by kind: the fusion or op name without its numeric suffix, e.g.
``transpose_copy_fusion`` or ``ynn_fusion`` (XLA:CPU's library calls: convs, dots
and some reductions). On the CPU, XLA runs independent operations on several threads at once,
so the operations' times add up to more than the step's wall time; the ratio of
the two says how many cores the step kept busy on average.

  python -m benchmarks.bench_op_profile --size small
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile

import jax

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads as wl

NAME = "op_profile"
TRACED_STEPS = {"tiny": 2, "small": 5, "large": 10}
TOP = 12  # op kinds listed per workload; the rest are summed into one row
# Events that are not XLA operations: executor bookkeeping, Python, waiting.
_NOT_OPS = re.compile(r"Execute|^\$|^end: |Await|^<")


def specs(size: str) -> list:
    """The steps profiled at each size."""
    cnn = [wl.CnnSpec("vgg11", 1.0, 32), wl.CnnSpec("resnet18", 1.0, 32)]
    return wl.by_size(size, cnn, [wl.CnnSpec("vgg11", 0.25, 32),
                                  wl.CnnSpec("resnet18", 0.25, 32),
                                  wl.BertSpec("minilm", 32, 128)])


def op_kind(name: str) -> str:
    """An event name without XLA's numeric suffix: 'ynn_fusion.12' -> 'ynn_fusion'."""
    return re.sub(r"\.\d+$", "", name)


def op_times(trace_dir: str) -> tuple[dict[str, float], dict[str, int]]:
    """Total nanoseconds and event count per op kind in the trace under ``trace_dir``."""
    from jax.profiler import ProfileData  # noqa: PLC0415

    files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {trace_dir}")
    total: dict[str, float] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    for plane in ProfileData.from_file(files[0]).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if _NOT_OPS.search(event.name):
                    continue
                total[op_kind(event.name)] += event.duration_ns
                count[op_kind(event.name)] += 1
    return dict(total), dict(count)


def profile(spec, steps: int) -> list[dict]:
    """Rows for one workload: op kinds by time per step, then the rest, then the total."""
    work = wl.build(spec)
    work.compile()
    work.steps(2)
    wall = timing.timed(lambda: work.steps(steps)) / steps
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            work.steps(steps)
        finally:
            jax.profiler.stop_trace()
        total, count = op_times(trace_dir)
    ops_ms = sum(total.values()) / 1e6 / steps
    ranked = sorted(total, key=lambda k: (-total[k], k))
    rows = [{"workload": spec.key, "op_kind": kind,
             "ms_per_step": total[kind] / 1e6 / steps,
             "per_step": count[kind] / steps,
             "share_of_op_time": total[kind] / 1e6 / steps / ops_ms}
            for kind in ranked[:TOP]]
    rest = ranked[TOP:]
    if rest:
        rest_ms = sum(total[k] for k in rest) / 1e6 / steps
        rows.append({"workload": spec.key, "op_kind": f"other ({len(rest)} kinds)",
                     "ms_per_step": rest_ms, "share_of_op_time": rest_ms / ops_ms})
    rows.append({"workload": spec.key, "op_kind": "ALL OPERATIONS",
                 "ms_per_step": ops_ms, "share_of_op_time": 1.0,
                 "wall_step_ms": 1e3 * wall, "busy_cores": ops_ms / (1e3 * wall)})
    return rows


def run(size: str = "small") -> dict:
    """Profiles the train steps of ``size`` and ranks their operations by time.

    Args:
      size: "tiny", "small" (full-width CNNs) or "large" (adds width 0.25 and MiniLM).

    Returns:
      {"name", "rows", "notes", "environment"}.
    """
    env = machine.environment()
    steps = TRACED_STEPS[common.check_size(size)]
    rows = []
    for spec in specs(size):
        rows += profile(spec, steps)
    notes = [
        f"{steps} traced steps after compilation and 3 warm-up steps; ms_per_step adds "
        "up every execution of an op kind over all threads, divided by the steps.",
        "ALL OPERATIONS: the sum over kinds; wall_step_ms: the same steps timed "
        "without the profiler; busy_cores = operation time / wall time (XLA runs "
        "independent operations on several threads at once).",
        "ynn_fusion: XLA:CPU's calls into its YNNPACK library, which on this CPU "
        "run the convolutions and matmuls and also some reductions (BatchNorm's "
        "sums); transpose_copy_fusion: layout copies, "
        "most of them the activations and output gradients XLA transposes to "
        "compute each conv's kernel gradient.",
    ]
    return output.result(NAME, rows, notes, env,
                         columns=["workload", "op_kind", "ms_per_step", "per_step",
                                  "share_of_op_time", "wall_step_ms", "busy_cores"])


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
