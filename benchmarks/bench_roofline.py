"""Achieved FLOP/s of the train step as a fraction of the machine's measured matmul peak.

Step FLOPs come from XLA's cost analysis of the compiled step
(``jax.jit(f).lower(...).compile().cost_analysis()['flops']``), step time from bench
``train_step`` (reused when run by run_all, else measured here). The peak is the best
of N jitted float32 square matmuls (2048 on CPU, 4096 on GPU), 2 n^3 FLOPs each.

  python -m benchmarks.bench_roofline --size small
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads as wl

NAME = "roofline"
PEAK_REPS = {"tiny": 2, "small": 5, "large": 10}


def measure_peak(size: str) -> dict:
    """Best-of-N float32 matmul FLOP/s on the default device.

    Args:
      size: "tiny" uses n = 512; otherwise 2048 on CPU and 4096 on accelerators.

    Returns:
      {"n", "reps", "best_s", "median_s", "peak_flops"}.
    """
    n = 512 if size == "tiny" else (2048 if jax.default_backend() == "cpu" else 4096)
    reps = PEAK_REPS[size]
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    times = timing.repeat(lambda: jax.block_until_ready(matmul(a, b)), reps, warmup=2)
    best = min(times)
    return {"n": n, "reps": reps, "best_s": best, "median_s": timing.summarize(times)["median"],
            "peak_flops": 2.0 * n ** 3 / best}


def specs(size: str) -> list:
    """The steps placed on the roofline at each size."""
    small = [wl.CnnSpec("vgg11", 0.25, 32), wl.CnnSpec("resnet18", 0.25, 32),
             wl.CnnSpec("vgg11", 1.0, 32), wl.CnnSpec("resnet18", 1.0, 32),
             wl.BertSpec("minilm", 32, 32)]
    return wl.by_size(size, small, [
        wl.CnnSpec("vgg11", 1.0, 128), wl.CnnSpec("resnet18", 1.0, 128),
        wl.BertSpec("minilm", 32, 128), wl.BertSpec("bert_base", 32, 128)])


COLUMNS = ("workload", "step_ms", "step_source", "xla_gflop_per_step", "analytic_gflop",
           "achieved_gflop_s", "peak_gflop_s", "fraction_of_peak")


def run(size: str = "small") -> dict:
    """Places every step of ``size`` against the measured matmul peak.

    Args:
      size: "tiny", "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment", "peak"}.
    """
    env = machine.environment()
    peak = measure_peak(common.check_size(size))
    rows = []
    for spec in specs(size):
        step_s, source = wl.step_seconds(spec, size)
        flops = wl.build(spec).xla_flops()
        analytic = None
        if isinstance(spec, wl.BertSpec):
            config, _ = wl.bert_config(spec.model)
            analytic = wl.bert_train_flops(config, spec.batch, spec.seq_len) / 1e9
        rows.append({
            "workload": spec.key, "step_ms": 1e3 * step_s, "step_source": source,
            "xla_gflop_per_step": flops / 1e9, "analytic_gflop": analytic,
            "achieved_gflop_s": flops / step_s / 1e9,
            "peak_gflop_s": peak["peak_flops"] / 1e9,
            "fraction_of_peak": flops / step_s / peak["peak_flops"],
        })
    notes = [
        f"Peak: {peak['peak_flops'] / 1e9:,.1f} GFLOP/s = best of {peak['reps']} jitted "
        f"float32 {peak['n']}x{peak['n']} @ {peak['n']}x{peak['n']} matmuls (2 n^3 FLOPs; "
        f"best {1e3 * peak['best_s']:.1f} ms, median {1e3 * peak['median_s']:.1f} ms) on "
        f"{env['machine']}, measured in this process just before the rows.",
        "xla_gflop_per_step: XLA's cost analysis of the compiled train step (forward, "
        "backward, optimizer, metrics); analytic_gflop (BERT only): 3 x forward matmul "
        "and attention FLOPs, a sanity check of the XLA count.",
        "step_source 'cached': the step time of bench train_step in this process.",
    ]
    return output.result(NAME, rows, notes, env, peak=peak, columns=list(COLUMNS))


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
