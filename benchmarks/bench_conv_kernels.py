"""Each conv of CIFAR VGG-11 and ResNet-18, pass by pass: XLA against PyTorch (oneDNN).

A CNN train step is mostly three kinds of convolution per layer: the forward conv,
the input gradient (``dx``) and the kernel gradient (``dw``). This bench times each
of the three on its own, for every distinct conv shape of the two CIFAR models,
once as wormjax's model issues it (``small_map_conv``, which is
``lax.conv_general_dilated`` except on maps below 3x3) and once through PyTorch's
``aten.convolution_backward`` in channels-last (oneDNN on CPU). Weighting each shape
by how often the model uses it gives the conv time of one step on both sides, pass
by pass, which says which kernels a train-step gap comes from.

Only the arithmetic is compared: no BatchNorm, ReLU, pooling or optimizer.
The first conv's ``dx`` (the gradient with respect to the images) is skipped: no
train step computes it.

  python -m benchmarks.bench_conv_kernels --size small
"""

from __future__ import annotations

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_conv_layers
from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from wormjax.models import common as model_common

NAME = "conv_kernels"
PASSES = ("fwd", "dx", "dw")
REPS = {"tiny": 2, "small": 5, "large": 9}
TORCH_AVAILABLE = importlib.util.find_spec("torch") is not None


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One conv as a model uses it: input map, channels, kernel, stride, and count."""

    model: str
    layer: str
    hw: int
    cin: int
    cout: int
    kernel: int = 3
    stride: int = 1
    count: int = 1  # how many convs of the model have exactly this shape

    @property
    def out_hw(self) -> int:
        pad = self.kernel // 2
        return (self.hw + 2 * pad - self.kernel) // self.stride + 1

    def gflop(self, batch: int) -> float:
        """Multiply-adds x 2 of one pass (all three passes cost the same)."""
        return (2.0 * batch * self.out_hw ** 2 * self.cin * self.cout
                * self.kernel ** 2 / 1e9)


def vgg11_shapes(width: float) -> list[ConvShape]:
    """CIFAR VGG-11's eight 3x3 convs."""
    return [ConvShape("vgg11", f"conv{i}", hw, cin, cout)
            for i, (hw, cin, cout) in enumerate(bench_conv_layers.layer_shapes(width))]


def resnet18_shapes(width: float) -> list[ConvShape]:
    """CIFAR ResNet-18's distinct conv shapes with their counts (20 convs in all)."""
    c = [model_common.scaled_width(v, width) for v in (64, 128, 256, 512)]
    shapes = [ConvShape("resnet18", "stem", 32, 3, c[0]),
              ConvShape("resnet18", "stage1 3x3", 32, c[0], c[0], count=4)]
    hw = 32
    for stage in range(1, 4):
        cin, cout = c[stage - 1], c[stage]
        name = f"stage{stage + 1}"
        shapes += [ConvShape("resnet18", f"{name} 3x3 s2", hw, cin, cout, stride=2),
                   ConvShape("resnet18", f"{name} shortcut 1x1 s2", hw, cin, cout,
                             kernel=1, stride=2),
                   ConvShape("resnet18", f"{name} 3x3", hw // 2, cout, cout, count=3)]
        hw //= 2
    return shapes


def grid(size: str) -> list[tuple[float, int]]:
    """(width, batch) pairs measured at each size."""
    common.check_size(size)
    return {"tiny": [(0.0625, 4)], "small": [(1.0, 32)],
            "large": [(1.0, 32), (1.0, 128), (0.25, 32)]}[size]


def _inputs(shape: ConvShape, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input map, kernel and output gradient (NHWC, HWIO, NHWC) shared by both sides."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, shape.hw, shape.hw, shape.cin), np.float32)
    k = rng.standard_normal((shape.kernel, shape.kernel, shape.cin, shape.cout),
                            np.float32) * np.float32((shape.kernel ** 2 * shape.cin) ** -0.5)
    g = rng.standard_normal((batch, shape.out_hw, shape.out_hw, shape.cout), np.float32)
    return x, k, g


def _xla_passes(shape: ConvShape, data) -> dict:
    """Forward, dx and dw as the model runs the conv: {pass: zero-argument call}."""
    pad = shape.kernel // 2
    padding = ((pad, pad), (pad, pad))
    strides = (shape.stride, shape.stride)

    def conv(x, k):
        dims = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
        return model_common.small_map_conv(x, k, strides, padding, dimension_numbers=dims)

    x, k, g = (jnp.asarray(a) for a in data)
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])
    dw = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])
    return {"fwd": lambda: jax.block_until_ready(fwd(x, k)),
            "dx": lambda: jax.block_until_ready(dx(x, k, g)),
            "dw": lambda: jax.block_until_ready(dw(x, k, g))}


def _torch_passes(shape: ConvShape, data) -> dict:
    """The same three passes in PyTorch, channels-last (oneDNN on CPU), NHWC/HWIO out."""
    import torch  # noqa: PLC0415 - optional dependency

    cl = torch.channels_last
    x_np, k_np, g_np = data
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    k = torch.from_numpy(k_np).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    g = torch.from_numpy(g_np).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    stride, pad = [shape.stride] * 2, [shape.kernel // 2] * 2

    def backward(mask):
        with torch.no_grad():
            return torch.ops.aten.convolution_backward(
                g, x, k, None, stride, pad, [1, 1], False, [0, 0], 1, mask)

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, k, None, stride, pad)

    return {"fwd": lambda: fwd().permute(0, 2, 3, 1),
            "dx": lambda: backward([True, False, False])[0].permute(0, 2, 3, 1),
            "dw": lambda: backward([False, True, False])[1].permute(2, 3, 1, 0)}


def _max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30))


def _median_ms(fn, reps: int) -> float:
    return 1e3 * timing.summarize(timing.repeat(fn, reps, warmup=2))["median"]


def time_shape(shape: ConvShape, batch: int, reps: int, with_torch: bool) -> dict:
    """One row: per pass, XLA ms, PyTorch ms, their ratio (> 1: XLA faster) and agreement."""
    row = {"model": shape.model, "layer": shape.layer, "count": shape.count,
           "hw": shape.hw, "cin": shape.cin, "cout": shape.cout,
           "kernel": shape.kernel, "stride": shape.stride, "batch": batch,
           "gflop_per_pass": shape.gflop(batch)}
    passes = [p for p in PASSES if not (p == "dx" and shape.cin == 3)]  # image input
    data = _inputs(shape, batch)
    xla = _xla_passes(shape, data)
    ref = _torch_passes(shape, data) if with_torch else {}
    diffs = []
    for p in passes:
        row[f"xla_{p}_ms"] = _median_ms(xla[p], reps)
        row[f"xla_{p}_gflop_s"] = row["gflop_per_pass"] / row[f"xla_{p}_ms"] * 1e3
        if with_torch:
            row[f"torch_{p}_ms"] = _median_ms(ref[p], reps)
            row[f"ratio_{p}"] = row[f"torch_{p}_ms"] / row[f"xla_{p}_ms"]
            diffs.append(_max_rel_diff(xla[p](), ref[p]().numpy()))
    if diffs:
        row["max_rel_diff"] = max(diffs)
    return row


def step_total(rows: list[dict], with_torch: bool) -> str:
    """One model's conv time per step (each shape times its count), pass by pass."""
    first = rows[0]
    parts = []
    for side in ("xla", "torch") if with_torch else ("xla",):
        per_pass = {p: sum(r.get(f"{side}_{p}_ms", 0.0) * r["count"] for r in rows)
                    for p in PASSES}
        parts.append(f"{side} " + " + ".join(f"{p} {ms:.1f}" for p, ms in per_pass.items())
                     + f" = {sum(per_pass.values()):.1f} ms")
    return (f"{first['model']} w{first['width']:g} b{first['batch']}, conv time of one "
            "step: " + "; ".join(parts) + ".")


def run(size: str = "small") -> dict:
    """Times every conv shape of VGG-11 and ResNet-18 for each (width, batch) of ``size``.

    Args:
      size: "tiny", "small" (width 1, batch 32) or "large" (adds batch 128 and
        width 0.25).

    Returns:
      {"name", "rows", "notes", "environment"}; PyTorch columns only when torch is
      installed and JAX runs on the CPU (the comparison is of CPU kernels).
    """
    env = machine.environment()
    reps = REPS[common.check_size(size)]
    with_torch = TORCH_AVAILABLE and jax.default_backend() == "cpu"
    if with_torch:
        import torch  # noqa: PLC0415

        torch.set_num_threads(env["usable_cores"])
    rows, notes = [], []
    for width, batch in grid(size):
        for shapes in (vgg11_shapes(width), resnet18_shapes(width)):
            model_rows = [{"width": width, **time_shape(s, batch, reps, with_torch)}
                          for s in shapes]
            notes.append(step_total(model_rows, with_torch))
            rows += model_rows
    notes += [
        f"Median of {reps} calls after 2 warm-up calls, per pass; count = convs of "
        "the model with that shape; gflop_per_pass is the same for all three passes.",
        "ratio_<pass> = torch ms / xla ms (> 1: XLA faster). max_rel_diff: the two "
        "sides' results on the same inputs, max |diff| / max |XLA result| over the passes.",
        "XLA side: wormjax.models.common.small_map_conv (VGG-11 uses it; on maps "
        "below 3x3 it is im2col + matmul, else lax.conv_general_dilated), NHWC/HWIO, "
        "dx and dw from jax.vjp. PyTorch side: conv2d and aten.convolution_backward "
        f"in channels_last, {env['usable_cores']} threads.",
    ]
    if not with_torch:
        notes.append("PyTorch columns absent: "
                     + ("torch is not installed." if not TORCH_AVAILABLE else
                        f"JAX runs on {jax.default_backend()}, not the CPU."))
    columns = ["model", "width", "layer", "count", "hw", "cin", "cout", "kernel", "stride",
               "batch", "gflop_per_pass"]
    for p in PASSES:
        columns += [f"xla_{p}_ms", f"torch_{p}_ms", f"ratio_{p}"]
    columns.append("max_rel_diff")
    return output.result(NAME, rows, notes, env, columns=columns)


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
