"""Data-parallel scaling of the train step over 1, 2 and 4 devices.

On a CPU the devices are forced host devices
(``--xla_force_host_platform_device_count``) sharing the same cores. There it
measures two things at once: the overhead of the sharded step (collectives,
partitioning), and how many more cores the per-device programs keep busy than
XLA:CPU's own threading does for one device. On a GPU host the same command
measures real multi-GPU scaling (devices = the real ones).

Each device count runs in its own process, since the host device count is
fixed when JAX starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads

# The library's model names (as the rows show them) -> the workloads' short ones.
_SHORT_NAMES = {name: short for short, name in workloads.CNN_MODELS.items()}
_DEVICE_COUNTS = {"tiny": (1, 2), "small": (1, 2, 4), "large": (1, 2, 4)}
# (model, width, global batch) per size.
_WORKLOADS = {
    "tiny": (("cifar_vgg11", 0.25, 32),),
    "small": (("cifar_vgg11", 0.25, 32), ("cifar_vgg11", 0.25, 128),
              ("cifar_resnet18", 0.25, 32)),
    "large": (("cifar_vgg11", 0.25, 32), ("cifar_vgg11", 0.25, 128),
              ("cifar_resnet18", 0.25, 32), ("cifar_vgg11", 1.0, 32),
              ("cifar_resnet18", 1.0, 32)),
}


def _worker(num_devices: int, model: str, width: float, batch: int, size: str) -> dict:
    from wormjax.pipeline import distributed

    # The one workload builder of every bench (the library's make_optimizer and
    # make_steps), placed on a mesh over ``num_devices`` as the pipeline places it.
    work = workloads.build(workloads.CnnSpec(_SHORT_NAMES[model], width, batch),
                           parallel=distributed.make_data_parallel(num_devices))
    reps = 5 if size != "tiny" else 2
    steps = 8 if width < 1 else 3
    samples = [s / steps for s in timing.repeat(lambda: work.steps(steps), reps)]
    return {"devices": num_devices, "batch": batch,
            "step_ms": timing.summarize([1e3 * s for s in samples])}


def run(size: str) -> dict:
    """Step time per device count and its ratio to one device."""
    import jax

    common.check_size(size)
    env = machine.environment()
    on_cpu = jax.default_backend() == "cpu"
    counts = [n for n in _DEVICE_COUNTS[size] if on_cpu or n <= jax.device_count()]
    rows = []
    for model, width, batch in _WORKLOADS[size]:
        base_ms = None
        for n in counts:
            proc_env = dict(os.environ)
            if on_cpu:
                proc_env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                         f" --xla_force_host_platform_device_count={n}")
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_scaling", "--worker", str(n),
                 model, str(width), str(batch), size], cwd=common.REPO_ROOT, env=proc_env,
                capture_output=True, text=True, timeout=1200)
            if out.returncode != 0:
                raise RuntimeError(f"scaling worker failed: {out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            median = res["step_ms"]["median"]
            base_ms = base_ms or median
            rows.append({"model": f"{model} w{width:g}", "global_batch": batch,
                         "devices": n, "step_ms": median,
                         "step_ms_iqr": res["step_ms"].get("iqr"),
                         "time_ratio_vs_1": median / base_ms,
                         "efficiency": base_ms / median})
    notes = ["Fixed global batch split over the devices (strong scaling); each device "
             "count in its own process, run one after another (not interleaved).",
             "On CPU the devices are forced host devices sharing the same cores. "
             "efficiency > 1 there means the split step keeps more cores busy than "
             "XLA:CPU's own threading does for one device (a CPU-only lever); < 1 is "
             "the overhead of the sharded step (collectives, partitioning)."]
    return output.result("data_parallel_scaling", rows, notes, env)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        n, model, width = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
        batch, size = int(sys.argv[5]), sys.argv[6]
        print(json.dumps(_worker(n, model, width, batch, size)))
        return
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
