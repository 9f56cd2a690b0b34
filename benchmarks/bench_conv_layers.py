"""Forward + backward time of every CIFAR VGG-11 conv: XLA's convolution vs im2col + dot.

On XLA:CPU a 3x3, padding-1 convolution over a 2x2 map (VGG-11's last two convs on
32x32 inputs) takes a slow path, orders of magnitude below the FLOP rate of the same
conv on 4x4. This bench times each layer's conv as flax's ``nn.Conv`` issues it
(``lax.conv_general_dilated``, NHWC/HWIO) against the identical computation written as
padding, nine shifted slices and one matmul (im2col), and checks they agree.

The library's VGG-11 now runs those 2x2-map convs as im2col on the CPU
(``wormjax.models.common.small_map_conv``). The bench times the whole train step as the
library runs it against the same step with XLA's conv everywhere
(``xla_convs_everywhere``, a trace-time substitution in this bench), interleaved: the
gain of that change.

  python -m benchmarks.bench_conv_layers --size small
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads as wl
from wormjax.models import common as model_common
from wormjax.models import vgg

NAME = "conv_layers"
REPS = {"tiny": 2, "small": 3, "large": 7}


def conv_xla(x_BHWC, kernel_HWIO):
    """The 3x3 stride-1 padding-1 conv exactly as flax's nn.Conv lowers it."""
    return jax.lax.conv_general_dilated(x_BHWC, kernel_HWIO, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_im2col(x_BHWC, kernel_HWIO):
    """The same conv as nine shifted slices of the padded input and one matmul."""
    b, h, w, c = x_BHWC.shape
    kh, kw, _, out = kernel_HWIO.shape
    padded = jnp.pad(x_BHWC, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches_BHWK = jnp.concatenate(
        [padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return patches_BHWK @ kernel_HWIO.reshape(kh * kw * c, out)


@contextlib.contextmanager
def xla_convs_everywhere():
    """While tracing inside, VGG-11 sends every conv to ``lax.conv_general_dilated``.

    The library's VGG passes ``wormjax.models.common.small_map_conv`` to each
    ``nn.Conv`` (im2col on maps below 3x3, on the CPU); it looks the function up
    when the model is traced, so replacing the attribute during tracing gives the
    model as it was before that change. The parameter tree is the same.
    """
    original = model_common.small_map_conv
    model_common.small_map_conv = jax.lax.conv_general_dilated
    try:
        yield
    finally:
        model_common.small_map_conv = original


def step_with_and_without(spec, size: str) -> dict:
    """Interleaved VGG-11 train-step windows: the library as is vs XLA conv everywhere."""
    target, _ = wl.WINDOWS[size]
    reps = REPS[size]
    library = wl.build(spec)
    library.compile()
    plain = wl.build(spec)
    with xla_convs_everywhere():
        plain.compile()  # traced (and compiled) without the small-map rewrite
    n = timing.steps_for_window(timing.timed(lambda: library.steps(1)), target)
    m = timing.steps_for_window(timing.timed(lambda: plain.steps(1)), target)
    t_lib, t_plain = timing.interleave([lambda: library.steps(n), lambda: plain.steps(m)],
                                       reps, warmup=0)
    speed = timing.summarize([(b / m) / (a / n) for a, b in zip(t_lib, t_plain)])
    return {"workload": spec.key, "reps": reps,
            "xla_everywhere_step_ms": 1e3 * timing.summarize(t_plain)["median"] / m,
            "library_step_ms": 1e3 * timing.summarize(t_lib)["median"] / n,
            "speedup": speed["median"], "speedup_q1": speed["q1"], "speedup_q3": speed["q3"]}


def layer_shapes(width: float) -> list[tuple[int, int, int]]:
    """(spatial size, in channels, out channels) of each CIFAR VGG-11 conv."""
    shapes, hw, cin = [], 32, 3
    for v in vgg.CIFAR_VGG11_CFG:
        if v == "M":
            hw //= 2
            continue
        cout = model_common.scaled_width(v, width)
        shapes.append((hw, cin, cout))
        cin = cout
    return shapes


def _fwd_bwd(conv):
    # Input and kernel gradients: what a train step computes per conv layer.
    return jax.jit(jax.grad(lambda x, k, g: jnp.vdot(conv(x, k), g), argnums=(0, 1)))


def time_layer(hw: int, cin: int, cout: int, batch: int, reps: int) -> dict:
    """Times one conv shape both ways and checks the outputs agree."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch, hw, hw, cin))
    k = jax.random.normal(keys[1], (3, 3, cin, cout)) * (2.0 / (9 * cin)) ** 0.5
    g = jax.random.normal(keys[2], (batch, hw, hw, cout))
    out = {}
    for name, conv in (("xla", conv_xla), ("im2col", conv_im2col)):
        fn = _fwd_bwd(conv)
        times = timing.repeat(lambda: jax.block_until_ready(fn(x, k, g)), reps, warmup=1)
        out[name] = timing.summarize(times)["median"]
    ref, alt = jax.jit(conv_xla)(x, k), jax.jit(conv_im2col)(x, k)
    rel = float(jnp.max(jnp.abs(ref - alt)) / (jnp.max(jnp.abs(ref)) + 1e-30))
    gflop = 3 * 2.0 * batch * hw * hw * cin * cout * 9 / 1e9  # forward + two gradients
    return {"hw": hw, "cin": cin, "cout": cout, "batch": batch,
            "xla_ms": 1e3 * out["xla"], "im2col_ms": 1e3 * out["im2col"],
            "speedup": out["xla"] / out["im2col"], "gflop": gflop,
            "xla_gflop_s": gflop / out["xla"], "im2col_gflop_s": gflop / out["im2col"],
            "max_rel_diff": rel}


def grid(size: str) -> list[tuple[float, int]]:
    """(width, batch) pairs measured at each size."""
    common.check_size(size)
    return {"tiny": [(0.25, 8)], "small": [(1.0, 32), (0.25, 32)],
            "large": [(1.0, 32), (1.0, 128), (0.25, 32), (0.25, 128)]}[size]


def run(size: str = "small") -> dict:
    """Times every VGG-11 conv layer of each (width, batch) of ``size``.

    Args:
      size: "tiny" (the 2x2 layers of width 0.25 only), "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment"}.
    """
    env = machine.environment()
    reps = REPS[common.check_size(size)]
    rows, notes = [], []
    for width, batch in grid(size):
        shapes = list(enumerate(layer_shapes(width)))
        if size == "tiny":
            shapes = [s for s in shapes if s[1][0] == 2][:1]
        layer_rows = []
        for i, (hw, cin, cout) in shapes:
            layer_rows.append({"width": width, "layer": f"conv{i}",
                               **time_layer(hw, cin, cout, batch, reps)})
        rows += layer_rows
        xla = sum(r["xla_ms"] for r in layer_rows)
        small_maps = sum(r["xla_ms"] for r in layer_rows if r["hw"] < 3)
        best = sum(min(r["xla_ms"], r["im2col_ms"]) for r in layer_rows)
        notes.append(
            f"width {width:g}, batch {batch}: convs fwd+bwd {xla:.0f} ms with XLA's conv, "
            f"{100 * small_maps / xla:.0f}% of it in the 2x2-map layers; "
            f"{best:.0f} ms taking the faster form per layer.")
    steps = [step_with_and_without(wl.CnnSpec("vgg11", w, b), size)
             for w, b in grid(size) if size != "tiny"]
    for r in steps:
        notes.append(
            f"Whole train step {r['workload']}: {r['xla_everywhere_step_ms']:.0f} ms with "
            f"XLA's conv everywhere, {r['library_step_ms']:.0f} ms as the library runs it "
            f"(2x2-map convs as im2col; paired speedup {r['speedup']:.2f}x, IQR {r['speedup_q1']:.2f}-"
            f"{r['speedup_q3']:.2f}, {r['reps']} rounds).")
    notes += [
        "xla_ms / im2col_ms: median of jit(grad wrt input and kernel) per call "
        f"({reps} reps after warm-up); gflop counts forward + both gradients; "
        "max_rel_diff: forward outputs of the two forms, max |diff| / max |output|.",
    ]
    return output.result(NAME, rows, notes, env, train_steps=steps,
                         columns=["width", "layer", "hw", "cin", "cout", "batch", "xla_ms",
                                  "im2col_ms", "speedup", "xla_gflop_s", "im2col_gflop_s",
                                  "max_rel_diff"])


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
