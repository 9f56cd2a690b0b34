"""Time of one jitted Early-Bird epoch-end update and its share of a training epoch.

``wormjax.early_bird(...).update(state, representative_list)`` for the representative
parameters of full-width CIFAR VGG-11 (2,752 BN channels), ResNet-18 (4,800) and
BERT-base query+key kernels (24 x 768 x 768 = 14.2M entries, window 3), plus MiniLM's
(12 x 384 x 384). The threshold is ``sort(|x|)[floor(N p)]``; the library's mask
(``masks.flat_magnitude_mask``) is timed alone, next to the literal sort-based mask,
and the two are checked to be identical.

  python -m benchmarks.bench_eb_update --size small
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import wormjax
from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads as wl
from wormjax import masks
from wormjax import models
from wormjax import selectors
from wormjax.models import bert as bert_lib

NAME = "eb_update"
PRUNE_RATIO = 0.5
CIFAR_TRAIN = 50_000
SST2_TRAIN = 67_349
BATCH = 32
REPS = {"tiny": (3, 3), "small": (20, 5), "large": (50, 10)}  # (CNN, BERT) repetitions
# (window l, stop distance s, trigger margin delta) of the paper's CNN and BERT searches.
SEARCH = {"cnn": (5, 0.1, 0.05), "bert": (3, 0.01, 0.005)}


def cnn_representative_shapes(model_name: str, width: float) -> list[tuple[int, ...]]:
    """Shapes of a CNN's BN scales in layout order (abstract init: nothing allocated)."""
    model = models.create_cnn(wl.CNN_MODELS[model_name], 10, width)
    abstract = jax.eval_shape(functools.partial(model.init, train=False),
                              jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    layout = selectors.batchnorm_selector()(abstract["params"])
    return [e.shape for e in layout.entries]


def bert_representative_shapes(config: bert_lib.BertConfig) -> list[tuple[int, ...]]:
    """Shapes of a BERT's query/key kernels in layout order."""
    model = bert_lib.BertForSequenceClassification(config, num_labels=2)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    layout = selectors.attention_selector()(abstract["params"])
    return [e.shape for e in layout.entries]


def sort_mask(magnitudes: jax.Array, prune_ratio: float) -> jax.Array:
    """The mask exactly as docs/algorithm.md writes it: ``|x| > sort(|x|)[floor(N p)]``."""
    k = masks.num_pruned(magnitudes.shape[0], prune_ratio)
    return magnitudes > jnp.sort(magnitudes)[k]


def _cases(size: str) -> list[dict]:
    """What to time: representative shapes and the epoch each one is compared with."""
    if size == "tiny":
        tiny_bert = bert_lib.BertConfig(hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=128)
        return [
            {"name": "vgg11 w0.25 BN", "kind": "cnn",
             "shapes": cnn_representative_shapes("vgg11", 0.25), "ref": None},
            {"name": "tiny BERT Q/K", "kind": "bert",
             "shapes": bert_representative_shapes(tiny_bert), "ref": None},
        ]
    large = size == "large"
    minilm_config, _ = wl.bert_config("minilm")
    # Small mode measures MiniLM at 32 x 32 only and scales it to 32 x 128 by FLOPs.
    bert_measured = (lambda m: wl.BertSpec(m, BATCH, 128)) if large else \
        (lambda m: wl.BertSpec("minilm", BATCH, 32))
    return [
        {"name": "vgg11 BN", "kind": "cnn", "shapes": cnn_representative_shapes("vgg11", 1.0),
         "ref": wl.CnnSpec("vgg11", 1.0, BATCH), "epoch_steps": CIFAR_TRAIN // BATCH},
        {"name": "resnet18 BN", "kind": "cnn",
         "shapes": cnn_representative_shapes("resnet18", 1.0),
         "ref": wl.CnnSpec("resnet18", 1.0, BATCH), "epoch_steps": CIFAR_TRAIN // BATCH},
        {"name": "minilm Q/K", "kind": "bert",
         "shapes": bert_representative_shapes(minilm_config),
         "ref": bert_measured("minilm"), "target": ("minilm", minilm_config),
         "epoch_steps": SST2_TRAIN // BATCH},
        {"name": "bert_base Q/K", "kind": "bert",
         "shapes": bert_representative_shapes(bert_lib.BertConfig()),
         "ref": bert_measured("bert_base"), "target": ("bert_base", bert_lib.BertConfig()),
         "epoch_steps": SST2_TRAIN // BATCH},
    ]


def _time_calls(fn, reps: int) -> dict:
    """Per-call seconds of an epoch-end operation (each call is one real use: blocked)."""
    return timing.summarize(timing.repeat(lambda: jax.block_until_ready(fn()), reps, warmup=2))


def time_update(shapes, kind: str, reps: int, seed: int = 0) -> dict:
    """Times the update, the library's mask alone and the sort-based mask.

    Args:
      shapes: representative leaf shapes in layout order.
      kind: "cnn" or "bert" (window, s, delta of the paper).
      reps: timed calls of each.
      seed: the random values.

    Returns:
      Statistics (seconds) and whether the two masks agree.
    """
    window, stop, margin = SEARCH[kind]
    search = wormjax.early_bird(prune_ratio=PRUNE_RATIO, window=window, stop_distance=stop,
                                trigger_margin=margin, schedule="worm")
    key = jax.random.PRNGKey(seed)
    keys = jax.random.split(key, len(shapes) + 1)
    base = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[1:], shapes)]
    num = sum(int(np.prod(s)) for s in shapes)
    state = search.init(num)
    # Fill the window with drifting parameters so the timed call is a full-window one.
    for i in range(window):
        noise = jax.random.normal(jax.random.fold_in(keys[0], i), (num,)) * 0.05
        drifted = masks.unflatten_mask(masks.flat_magnitudes(base) + noise, base)
        state = search.update(state, drifted)
    jax.block_until_ready(state)
    update = _time_calls(lambda: search.update(state, base), reps)

    library = jax.jit(lambda rep: masks.flat_magnitude_mask(masks.flat_magnitudes(rep),
                                                            PRUNE_RATIO))
    by_sort = jax.jit(lambda rep: sort_mask(masks.flat_magnitudes(rep), PRUNE_RATIO))
    same = bool(jnp.array_equal(library(base), by_sort(base)))
    return {"entries": num, "window": window, "update": update,
            "mask": _time_calls(lambda: library(base), reps),
            "sort_mask": _time_calls(lambda: by_sort(base), reps), "masks_equal": same}


def _epoch_seconds(case: dict, size: str) -> tuple[float | None, str]:
    """Epoch time to compare with, and a sentence saying what it is."""
    ref = case["ref"]
    if ref is None:
        return None, "none at size tiny (no step is measured)"
    step_s, how = wl.step_seconds(ref, size)
    steps = case["epoch_steps"]
    if isinstance(ref, wl.CnnSpec):
        return step_s * steps, f"{steps} x {how} {ref.key} step (CIFAR-10 epoch)"
    name, target_config = case["target"]
    if ref.model == name and ref.seq_len == 128:
        return step_s * steps, f"{steps} x {how} {ref.key} step (SST-2 epoch at seq 128)"
    source_config, _ = wl.bert_config(ref.model)
    scale = (wl.bert_train_flops(target_config, BATCH, 128)
             / wl.bert_train_flops(source_config, ref.batch, ref.seq_len))
    return (step_s * scale * steps,
            f"{steps} x ({how} {ref.key} step x {scale:.1f}, the analytic FLOP ratio to "
            f"{name} b32x128) (SST-2 epoch at seq 128, ESTIMATE)")


COLUMNS = ("representative", "entries", "window", "reps", "update_ms", "update_q1_ms",
           "update_q3_ms", "mask_ms", "sort_mask_ms", "sort_mask_over_update",
           "masks_equal", "epoch_s", "update_share_of_epoch_pct")


def run(size: str = "small") -> dict:
    """Times the epoch-end update of every representative set of ``size``.

    Args:
      size: "tiny" (micro sizes, no epoch reference), "small" or "large".

    Returns:
      {"name", "rows", "notes", "environment"}.
    """
    env = machine.environment()
    cnn_reps, bert_reps = REPS[common.check_size(size)]
    rows, notes = [], []
    for case in _cases(size):
        reps = cnn_reps if case["kind"] == "cnn" else bert_reps
        t = time_update(case["shapes"], case["kind"], reps)
        epoch_s, what = _epoch_seconds(case, size)
        update_s = t["update"]["median"]
        rows.append({
            "representative": case["name"], "entries": t["entries"], "window": t["window"],
            "reps": reps, "update_ms": 1e3 * update_s,
            "update_q1_ms": 1e3 * t["update"]["q1"], "update_q3_ms": 1e3 * t["update"]["q3"],
            "update_min_ms": 1e3 * t["update"]["min"],
            "update_max_ms": 1e3 * t["update"]["max"],
            "mask_ms": 1e3 * t["mask"]["median"],
            "sort_mask_ms": 1e3 * t["sort_mask"]["median"],
            "sort_mask_over_update": t["sort_mask"]["median"] / update_s,
            "masks_equal": t["masks_equal"],
            "epoch_s": epoch_s,
            "update_share_of_epoch_pct": None if epoch_s is None else 100 * update_s / epoch_s,
            "epoch_reference": what,
        })
        notes.append(f"{case['name']}: epoch = {what}.")
    big = max(rows, key=lambda r: r["entries"])
    notes += [
        "update_ms: one call of the jitted update (window full, same compiled function "
        "every call), blocked, median over reps after 2 warm-up calls; mask_ms: the "
        "library's masks.flat_magnitude_mask alone; sort_mask_ms: the literal "
        "|x| > sort(|x|)[floor(N p)] on the same input; masks_equal: both give the "
        "identical mask.",
        f"Largest set ({big['representative']}, {big['entries']:,} entries): update "
        f"{big['update_ms']:.1f} ms with the library's threshold; a full sort alone "
        f"would take {big['sort_mask_ms']:.1f} ms "
        f"({big['sort_mask_over_update']:.1f}x the whole update), i.e. the sort would "
        "dominate the update.",
    ]
    return output.result(NAME, rows, notes, env, columns=list(COLUMNS))


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
