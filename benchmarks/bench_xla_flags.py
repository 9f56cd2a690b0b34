"""Train-step time under XLA flag sets (CPU backend options), one process per flag set.

XLA reads ``XLA_FLAGS`` once at start-up, so each flag set runs the library's train
step (bench ``train_step``'s workloads) in a fresh child process. The order is
baseline, each flag set, baseline again: the two baselines bracket the drift of a
shared machine, and each flag set is compared with their mean. A flag this jaxlib
does not know makes XLA abort; that row says so instead of a time.

  python -m benchmarks.bench_xla_flags --size small
"""

from __future__ import annotations

import statistics
import sys

import jax

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import workloads as wl

NAME = "xla_flags"
_CHILD_FLAG = "--child"
FLAG_SETS = {
    "single-thread Eigen": "--xla_cpu_multi_thread_eigen=false",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "XNNPACK graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode="
                            "XNN_GRAPH_FUSION_MODE_GREEDY",
}


def specs(size: str) -> list:
    """Steps timed under every flag set."""
    small = [wl.CnnSpec("vgg11", 0.25, 32), wl.CnnSpec("resnet18", 0.25, 32)]
    return wl.by_size(size, small, [wl.CnnSpec("resnet18", 1.0, 32),
                                    wl.BertSpec("minilm", 32, 32)])


def _child(size: str) -> dict:
    """Median step ms of every spec in this process (its XLA_FLAGS fixed at start)."""
    return {spec.key: wl.measure(spec, size)["step_ms"] for spec in specs(size)}


def _measure(size: str, flags: str) -> dict | str:
    """Step ms per workload under ``flags``, or the failure's last line."""
    try:
        return common.run_child("benchmarks.bench_xla_flags", [_CHILD_FLAG, size],
                                env={"XLA_FLAGS": flags})
    except RuntimeError as err:
        return str(err).strip().splitlines()[-1][:200]


def run(size: str = "small") -> dict:
    """Times the steps of ``size`` with no flags and with each of ``FLAG_SETS``.

    Args:
      size: "tiny", "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment"}; skipped on accelerators (CPU flags).
    """
    env = machine.environment()
    common.check_size(size)
    if jax.default_backend() != "cpu":
        return output.result(NAME, [], ["SKIPPED: these are XLA:CPU flags; the default "
                                        f"backend is {jax.default_backend()}."], env)
    before = _measure(size, "")
    results = {name: _measure(size, flags) for name, flags in FLAG_SETS.items()}
    after = _measure(size, "")
    for label, base in (("first", before), ("last", after)):
        if isinstance(base, str):
            raise RuntimeError(f"the {label} baseline run failed: {base}")
    rows = []
    for spec in specs(size):
        base = statistics.mean([before[spec.key], after[spec.key]])
        rows.append({"flags": "(none)", "workload": spec.key, "step_ms": base,
                     "baseline_spread_pct": 100 * abs(before[spec.key] - after[spec.key])
                     / base, "speedup_vs_baseline": 1.0})
        for name, res in results.items():
            row = {"flags": f"{name}: {FLAG_SETS[name]}", "workload": spec.key}
            if isinstance(res, str):
                row["error"] = res
            else:
                row.update(step_ms=res[spec.key], speedup_vs_baseline=base / res[spec.key])
            rows.append(row)
    notes = [
        "One child process per flag set, in the order baseline, flag sets, baseline; "
        "step_ms is bench train_step's median (same windows); the baseline row is the "
        "mean of the two baseline processes and baseline_spread_pct their difference, "
        "the noise floor of this comparison (not interleaved: flags need a process).",
        "speedup_vs_baseline > 1: faster with the flags.",
    ]
    return output.result(NAME, rows, notes, env,
                         columns=["flags", "workload", "step_ms", "speedup_vs_baseline",
                                  "baseline_spread_pct", "error"])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD_FLAG:
        output.child_output(_child(sys.argv[2]))
        return
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
