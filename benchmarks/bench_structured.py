"""Measured speedup of structured pruning at p = 0.5 next to its FLOP reduction.

For CIFAR VGG-11 and CIFAR ResNet-18 this builds the compact model of a global p = 0.5
BatchNorm ticket (``wormjax.structured.build_compact``) and times, against the dense
model, the wormjax train step of ``workloads.cnn_workload`` (SGD momentum 0.9, lr 0.01
from configs/base.py, BN statistics updated, no WORM transform) and its eval step. The models are randomly initialised and their BN scales set to
random |N(0, 1)| values: at initialisation every scale is equal and the mask would be
arbitrary, and trained scales are not available here. The ResNet keeps the union of
each residual group's masks (see ``wormjax/structured.py``), so it keeps more than half.
``--channel-multiple 1 8`` also times a compact model whose counts are rounded up to
multiples of 8 (on XLA:CPU the width-0.25 ResNet ran faster that way despite more FLOPs;
GPU tensor cores also want multiples of 8).

Read CPU numbers with care: XLA:CPU runs a 3x3 conv over a 2x2 map with 512 channels
(the last two convs of CIFAR VGG-11 at width 1) about 25x slower than one over a 4x4
map with four times the work, so the dense VGG is pathologically slow there and its
measured speedup far exceeds the FLOP reduction.

Timings are paired: in one process, after warm-up, dense and compact runs alternate
(order swapped every repetition) and each model's median over repetitions is reported,
a repetition being the mean of ``--steps`` back-to-back calls.

  python -m benchmarks.bench_structured --size small --out /tmp/structured.json
  python -m benchmarks.bench_structured --size large --batch 32 128 --channel-multiple 1 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import workloads as wl
from wormjax import costs
from wormjax import masks
from wormjax import selectors
from wormjax import structured
from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg

MODELS = {"cifar_vgg11": vgg.CifarVGG11, "cifar_resnet18": resnet.CifarResNet18}
SIZES = {  # widths, repetitions, steps per repetition
    "small": ((0.25,), 5, 3),
    "large": ((1.0, 0.25), 10, 5),
}
PRUNE_RATIO = 0.5


def random_variables(model, seed: int = 0):
    """He-normal kernels, BN scales |N(0, 1)|, zero biases, unit BN statistics."""
    rs = np.random.RandomState(seed)

    def param(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return (rs.standard_normal(s.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        if name == "scale":
            return np.abs(rs.standard_normal(s.shape)).astype(np.float32)
        return np.zeros(s.shape, np.float32)

    abstract = common.abstract_variables(model)
    stats = jax.tree_util.tree_map_with_path(
        lambda p, s: np.full(s.shape, 1.0 if p[-1].key == "var" else 0.0, np.float32),
        abstract["batch_stats"])
    return {"params": jax.tree_util.tree_map_with_path(param, abstract["params"]),
            "batch_stats": stats}


class _Timed:
    """One model's workload (``workloads.cnn_workload``), timed call by call."""

    def __init__(self, work):
        self.work = work
        self.times = {"train": [], "eval": []}

    def run(self, kind: str, steps: int, record: bool = True) -> None:
        start = time.perf_counter()
        (self.work.steps if kind == "train" else self.work.evals)(steps)
        if record:
            self.times[kind].append((time.perf_counter() - start) / steps)


def _forward_flops(model, variables, shape) -> float:
    return costs.flops_per_example(lambda v, x: model.apply(v, x, train=False), variables,
                                   jax.ShapeDtypeStruct(shape, jnp.float32))


def bench_one(name: str, width: float, batch_size: int, reps: int, steps: int,
              multiples: tuple[int, ...] = (1,)) -> list[dict]:
    """Times dense and compact (one per channel multiple) for one model and batch."""
    model = MODELS[name](num_classes=10, width=width)
    variables = random_variables(model)
    layout = selectors.batchnorm_selector()(variables["params"])
    keep = masks.flat_magnitude_mask(
        masks.flat_magnitudes(layout.representative(variables["params"])), PRUNE_RATIO)
    shape = (batch_size, 32, 32, 3)

    def timed(m, v, label):  # SGD from configs/base.py, no WORM: the bare step
        return _Timed(wl.cnn_workload(m, v, batch_size, key=f"{name} {label}",
                                      with_truncation=False, seed=1))

    runs = {"dense": timed(model, variables, "dense")}
    flops = {"dense": _forward_flops(model, variables, shape)}
    infos = {}
    for multiple in multiples:
        compact_model, compact_vars, infos[multiple] = structured.build_compact(
            model, variables, layout, keep, channel_multiple=multiple)
        runs[multiple] = timed(compact_model, compact_vars, f"compact x{multiple}")
        flops[multiple] = _forward_flops(compact_model, compact_vars, shape)
    for timed in runs.values():  # compile and warm up
        for kind in ("train", "eval"):
            timed.run(kind, 2, record=False)
    for rep in range(reps):
        order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
        for kind in ("train", "eval"):
            for key in order:
                runs[key].run(kind, steps)
    ms = {(key, kind): 1e3 * statistics.median(runs[key].times[kind])
          for key in runs for kind in ("train", "eval")}
    rows = []
    for multiple, info in infos.items():
        rows.append({
            "model": name, "width": width, "batch": batch_size,
            "channel_multiple": multiple,
            "bn_channels_kept": info["bn_channels"][0],
            "bn_channels_total": info["bn_channels"][1],
            "params_dense": info["params_dense"],
            "params_compact": info["params_compact"],
            "forward_flops_dense": flops["dense"],
            "forward_flops_compact": flops[multiple],
            "train_flops_dense": 3 * flops["dense"],
            "train_flops_compact": 3 * flops[multiple],
            "flop_reduction": flops["dense"] / flops[multiple],
            "train_ms_dense": ms["dense", "train"],
            "train_ms_compact": ms[multiple, "train"],
            "eval_ms_dense": ms["dense", "eval"], "eval_ms_compact": ms[multiple, "eval"],
            "train_speedup": ms["dense", "train"] / ms[multiple, "train"],
            "eval_speedup": ms["dense", "eval"] / ms[multiple, "eval"],
            "reps": reps, "steps_per_rep": steps})
    return rows


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table."""
    lines = ["| model | width | batch | multiple | BN ch. kept | params dense -> compact "
             "| FLOP reduction | train ms dense / compact | train speedup "
             "| eval ms dense / compact | eval speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['width']} | {r['batch']} | {r['channel_multiple']} "
            f"| {r['bn_channels_kept']}/{r['bn_channels_total']} "
            f"| {r['params_dense']:,} -> {r['params_compact']:,} "
            f"| {r['flop_reduction']:.2f}x "
            f"| {r['train_ms_dense']:.1f} / {r['train_ms_compact']:.1f} "
            f"| {r['train_speedup']:.2f}x "
            f"| {r['eval_ms_dense']:.1f} / {r['eval_ms_compact']:.1f} "
            f"| {r['eval_speedup']:.2f}x |")
    return "\n".join(lines)


def run(size: str) -> dict:
    """The ``run_all`` entry point: every model at the size's widths, batch 32."""
    from benchmarks import machine  # noqa: PLC0415 - the suite's shared helpers
    from benchmarks import output  # noqa: PLC0415

    env = machine.environment()
    widths, reps, steps = SIZES["small" if size == "tiny" else size]
    if size == "tiny":
        reps, steps = 1, 1
    rows = []
    for name in MODELS:
        for width in widths:
            rows += bench_one(name, width, 32, reps, steps, (1,))
    notes = [f"Global BN mask at p = {PRUNE_RATIO} on a random init whose BN scales "
             "are |N(0, 1)|; speedup = dense / compact median step time, paired."]
    return output.result("structured", rows, notes, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="small: width 0.25 only, few repetitions (a quick check)")
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS),
                        default=list(MODELS))
    parser.add_argument("--reps", type=int, help="override the size's repetitions")
    parser.add_argument("--steps", type=int, help="override the steps per repetition")
    parser.add_argument("--channel-multiple", type=int, nargs="+", default=[1],
                        help="compact variants: kept counts rounded up to a multiple")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    widths, reps, steps = SIZES[args.size]
    reps, steps = args.reps or reps, args.steps or steps
    rows = []
    for name in args.models:
        for width in widths:
            for batch_size in args.batch:
                rows += bench_one(name, width, batch_size, reps, steps,
                                  tuple(args.channel_multiple))
                print(f"done {name} width {width} batch {batch_size}", flush=True)
    device = jax.devices()[0]
    env = {"jax": jax.__version__, "backend": jax.default_backend(),
           "device": getattr(device, "device_kind", str(device)),
           "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "prune_ratio": PRUNE_RATIO,
                       "init": "random; BN scales |N(0, 1)|", "environment": env,
                       "rows": rows}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
