"""Train-step throughput of the library's real jitted step (truncation inactive).

CIFAR VGG-11 and ResNet-18 (images/s) and the BERT classifier (tokens/s), through
``make_steps`` with the wormjax optimizer chain. Random inputs already on the device,
so the figure is the step alone; see bench ``input_pipeline`` for the host side.

  python -m benchmarks.bench_train_step --size small
"""

from __future__ import annotations

import jax

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import workloads as wl

NAME = "train_step"


def specs(size: str) -> list:
    """The workloads of a size (small drops full-width batch 128 and BERT-base).

    Large mode on an accelerator adds bfloat16-compute rows of the biggest steps.
    """
    common.check_size(size)
    if size == "tiny":
        return [wl.TINY]
    cnn = [wl.CnnSpec(m, 0.25, b) for m in ("vgg11", "resnet18") for b in (32, 128)]
    if size == "small":
        cnn += [wl.CnnSpec(m, 1.0, 32) for m in ("vgg11", "resnet18")]
        return cnn + [wl.BertSpec("minilm", 32, 32)]
    cnn += [wl.CnnSpec(m, 1.0, b) for m in ("vgg11", "resnet18") for b in (32, 128)]
    bert = [wl.BertSpec(m, 32, s) for m in ("minilm", "bert_base") for s in (32, 128)]
    extra = []
    if jax.default_backend() != "cpu":
        # bfloat16 compute (parameters stay float32): what the tensor cores are for.
        extra = [wl.CnnSpec(m, 1.0, 128, "bfloat16") for m in ("vgg11", "resnet18")]
        extra += [wl.BertSpec("bert_base", 32, 128, "bfloat16")]
    return cnn + bert + extra


COLUMNS = ("workload", "weights", "compile_s", "steps_per_window", "reps", "step_ms",
           "step_ms_q1", "step_ms_q3", "images_per_s", "tokens_per_s", "examples_per_s")


def run(size: str = "small") -> dict:
    """Measures every workload of ``size``.

    Args:
      size: "tiny", "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment"}; one row per workload.
    """
    env = machine.environment()
    rows = []
    for spec in specs(size):
        rows.append(wl.measure(spec, size))
    target, reps = wl.WINDOWS[size]
    notes = [
        "wormjax step = make_steps(forward, make_optimizer(...)) with truncation inactive "
        "(the same compiled step runs active truncation; see worm_overhead).",
        "CNN: SGD lr 0.01 momentum 0.9 (configs/base.py), uint8 NHWC input normalised "
        "inside the step. BERT: AdamW lr 2e-5 wd 0.01 with warm-up/decay schedule, "
        "dropout on; 'b32x32' is batch 32 x sequence 32 (SST-2's first length bucket).",
        f"Timing: after compile and one untimed window, {reps} windows of "
        f"'steps_per_window' steps (~{target:g} s each), one block_until_ready per "
        "window; step_ms is the median window time / steps, q1/q3 its quartiles. "
        f"Steps longer than {target:g} s: 3 windows of 2 steps, no extra warm-up "
        "window (3 steps already ran after compilation).",
        "Rows ending 'bfloat16' (large mode on an accelerator only): compute dtype "
        "bfloat16 (config model.dtype), parameters and optimizer state float32.",
        "VGG-11 on CPU runs its two 3x3 convs on the 2x2 map as im2col + matmul "
        "(XLA's conv takes a slow path there; see bench conv_layers); every other "
        "conv is XLA's (bench conv_kernels compares them with PyTorch's, pass by pass).",
    ]
    return output.result(NAME, rows, notes, env, columns=list(COLUMNS))


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
