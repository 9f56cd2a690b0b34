"""The wormjax train steps the benchmarks time: the library's own jitted step.

A workload is ``wormjax.pipeline.steps.make_steps`` around a model's forward and
the wormjax optimizer chain (``make_optimizer``: WORM truncation first, then SGD
or AdamW), its train state, two fixed random batches already on the device, and
two truncation states (inactive; active with a random 50% mask and r = 3e-3).
Random batches keep the input pipeline out of the step figures (bench
``input_pipeline`` measures it separately).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common
from benchmarks import timing
from wormjax import costs
from wormjax import models
from wormjax import selectors
from wormjax import truncation as truncation_lib
from wormjax.models import bert as bert_lib
from wormjax.models import forwards
from wormjax.models import hf_import
from wormjax.pipeline import state as state_lib
from wormjax.pipeline import steps as steps_lib

CNN_MODELS = {"vgg11": "cifar_vgg11", "resnet18": "cifar_resnet18"}
BERT_MODELS = ("minilm", "bert_base")
TRUNCATION_RATIO = 3e-3
# all-MiniLM-L6-v2's shape, used when the checkpoint package is not installed.
_MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536)

# Timed-window length (seconds) and repetitions per size.
WINDOWS = {"tiny": (0.2, 2), "small": (1.0, 5), "large": (3.0, 7)}


def _dtype_suffix(dtype: str) -> str:
    return "" if dtype == "float32" else f" {dtype}"


@dataclasses.dataclass(frozen=True)
class CnnSpec:
    """A CIFAR CNN train step: model name, width multiplier and batch size."""

    model: str
    width: float
    batch: int
    dtype: str = "float32"  # compute dtype; parameters stay float32
    kind = "cnn"  # a class constant, not a field

    @property
    def key(self) -> str:
        """The workload's name in results and in ``common.STEP_CACHE``."""
        return f"{self.model} w{self.width:g} b{self.batch}{_dtype_suffix(self.dtype)}"


@dataclasses.dataclass(frozen=True)
class BertSpec:
    """A BERT sequence-classification train step: size name, batch and sequence length."""

    model: str
    batch: int
    seq_len: int
    dtype: str = "float32"  # compute dtype; parameters stay float32
    kind = "bert"  # a class constant, not a field

    @property
    def key(self) -> str:
        """The workload's name in results and in ``common.STEP_CACHE``."""
        return (f"{self.model} b{self.batch}x{self.seq_len}"
                f"{_dtype_suffix(self.dtype)}")


# The one step every bench runs at size tiny (its smoke test).
TINY = CnnSpec("vgg11", 0.0625, 8)


def by_size(size: str, small: list, large_extra: list = ()) -> list:
    """A bench's workloads at ``size``: ``TINY`` alone, ``small``, or ``small`` + ``large_extra``.

    Raises:
      ValueError: ``size`` is not one of ``common.SIZES``.
    """
    common.check_size(size)
    if size == "tiny":
        return [TINY]
    return list(small) + (list(large_extra) if size == "large" else [])


def cnn_optim() -> ml_collections.ConfigDict:
    """The paper's CNN recipe from configs/base.py: SGD, lr 0.01, momentum 0.9."""
    from configs import base  # noqa: PLC0415 - configs ship with the project

    return base.get_config().optim


def bert_optim() -> ml_collections.ConfigDict:
    """AdamW for BERT fine-tuning (lr 2e-5, weight decay 0.01, warm-up then decay)."""
    return ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=2e-5, momentum=0.0, weight_decay=0.01,
        warmup_steps=100, grad_clip_norm=0.0))


def image_task(spec: CnnSpec):
    """The library's ImageTask for ``spec`` on the bundled digits (no download needed).

    Only its forward, initial variables and selector are used; the batches are random.
    """
    from configs import base  # noqa: PLC0415
    from wormjax.pipeline import image_task as image_task_lib  # noqa: PLC0415

    config = base.get_config()
    config.model.name = CNN_MODELS[spec.model]
    config.model.width = spec.width
    config.model.dtype = spec.dtype
    config.model.num_classes = 10
    config.data.name = "digits"
    config.optim.batch_size = spec.batch
    config.progress_bar = False
    return image_task_lib.ImageTask(config)


def bert_config(name: str) -> tuple[bert_lib.BertConfig, str | None]:
    """The architecture of a BERT size and the checkpoint folder it loads from, if any."""
    if name == "minilm":
        folder = hf_import.minilm_checkpoint_dir()
        if folder:
            return bert_lib.BertConfig.from_json(os.path.join(folder, "config.json")), folder
        return bert_lib.BertConfig(**_MINILM_SHAPE), None
    if name == "bert_base":
        return bert_lib.BertConfig(), None  # 12 x 768, 3072 intermediate, 30522 vocab
    raise ValueError(f"BERT size must be one of {BERT_MODELS}, got {name!r}")


def bert_model(name: str, seed: int = 0, dtype: str = "float32"):
    """(model, variables, where the weights came from) for a BERT size."""
    config, folder = bert_config(name)
    compute = models.DTYPES[dtype]
    if folder:
        loaded = hf_import.load_hf_bert(folder, num_labels=2, rng=seed, dtype=compute)
        return loaded.model, loaded.variables, "real (all-MiniLM-L6-v2)"
    model = bert_lib.BertForSequenceClassification(config, num_labels=2, dtype=compute)
    ids = jnp.zeros((1, 8), jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), ids)
    return model, {"params": variables["params"]}, "random weights"


def bert_train_flops(config: bert_lib.BertConfig, batch: int, seq_len: int) -> float:
    """Analytic FLOPs of one BERT train step (3x forward: matmuls and attention).

    Per token and layer the forward does 2 * (4 H^2 + 2 H I) for the projections
    and feed-forward, plus 4 * L * H for the scores and the weighted sum; embedding
    lookups, norms and the head are ignored.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = layers * (2 * (4 * h * h + 2 * h * i) + 4 * seq_len * h)
    return 3.0 * per_token * batch * seq_len


class StepWorkload:
    """One compiled wormjax train step, its state and fixed device batches."""

    def __init__(self, spec, forward, variables, optim, selector, batches, *,
                 items_per_step: int, unit: str, with_truncation: bool = True,
                 total_steps: int | None = None, weights: str = "random",
                 parallel=None):
        self.spec, self.unit, self.items_per_step = spec, unit, items_per_step
        self.weights = weights
        self.counter = steps_lib.CompileCounter()
        # The bare arm is the same chain (schedule, decay, clipping) without WORM.
        tx = state_lib.make_optimizer(optim, selector, total_steps=total_steps,
                                      with_truncation=with_truncation)
        self.fns = steps_lib.make_steps(forward, tx, self.counter)
        self.layout = selector(variables["params"])
        # A data-parallel mesh (bench scaling) places state and batches as the
        # pipeline does; without one, everything sits on the default device.
        place = parallel.replicate if parallel else (lambda tree: tree)
        put = parallel.put_batch if parallel else jax.device_put
        self.state = place(state_lib.create_train_state(variables, tx, seed=0))
        self.batches = [put(b) for b in batches]
        self.acc = place(steps_lib.zero_metrics())
        n = self.layout.num_entries
        self.inactive = place(steps_lib.inactive_truncation(n))
        keep = np.random.default_rng(0).random(n) < 0.5
        self.active = place(truncation_lib.WormTruncationState(
            keep=jnp.asarray(keep), ratio=jnp.asarray(TRUNCATION_RATIO, jnp.float32),
            active=jnp.asarray(True)))
        self._i = 0
        self._eval_batches = None

    def steps(self, num_steps: int, truncation=None) -> None:
        """Runs ``num_steps`` train steps and waits for the last one (one sync)."""
        truncation = self.inactive if truncation is None else truncation
        state, acc = self.state, self.acc
        for _ in range(num_steps):
            batch = self.batches[self._i % len(self.batches)]
            self._i += 1
            state, acc = self.fns.train(state, batch, truncation, acc)
        self.state, self.acc = jax.block_until_ready((state, acc))

    def evals(self, num_steps: int) -> None:
        """Runs ``num_steps`` eval steps on the current state and waits for the last one."""
        if self._eval_batches is None:  # eval batches weight examples by a 0/1 mask
            self._eval_batches = [dict(b, mask=jnp.ones(b["label"].shape, jnp.float32))
                                  for b in self.batches]
        acc = steps_lib.zero_metrics()
        for i in range(num_steps):
            acc = self.fns.eval(self.state.params, self.state.batch_stats,
                                self._eval_batches[i % len(self._eval_batches)], acc)
        jax.block_until_ready(acc)

    def compile(self) -> float:
        """Seconds of the first step (trace + compile + one run), for both truncations."""
        start = time.perf_counter()
        self.steps(1)
        seconds = time.perf_counter() - start
        self.steps(1, self.active)  # must hit the same executable
        if self.counter.counts.get("train_step", 0) != 1:
            raise RuntimeError(f"the train step recompiled: {self.counter.counts}")
        return seconds

    def xla_flops(self) -> float:
        """FLOPs of one step from XLA's cost analysis of the compiled executable."""
        return costs.xla_flops(self.fns.train, self.state, self.batches[0], self.inactive,
                               self.acc)


def cnn_workload(model, variables, batch: int, *, key: str, with_truncation: bool = True,
                 seed: int = 0, num_classes: int = 10) -> StepWorkload:
    """The wormjax step of any library CNN and its variables (a compact model too).

    Batches are random float CIFAR-shaped images, fed to the model as they are.

    Args:
      model: the linen CNN.
      variables: its variables (host or device arrays).
      batch: images per step.
      key: the workload's name in results.
      with_truncation: the wormjax chain (True) or the same optimizer without WORM.
      seed: batch contents.
      num_classes: the label range.
    """
    rng = np.random.default_rng(seed)
    batches = [{"image": rng.standard_normal((batch, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, num_classes, (batch,)).astype(np.int32)}
               for _ in range(2)]
    return StepWorkload(key, forwards.cnn_forward(model),
                        jax.tree_util.tree_map(jnp.asarray, variables), cnn_optim(),
                        selectors.batchnorm_selector(), batches, items_per_step=batch,
                        unit="images", with_truncation=with_truncation)


def build(spec, *, with_truncation: bool = True, seed: int = 0,
          parallel=None) -> StepWorkload:
    """A ready-to-time workload for a ``CnnSpec`` or ``BertSpec``.

    Args:
      spec: what to build.
      with_truncation: the wormjax chain (True) or the same optimizer without the
        WORM transform (False, for the transform's fixed cost).
      seed: initial weights and batch contents.
      parallel: a ``pipeline.distributed.DataParallel`` to replicate the state on
        and shard the batches over; None: the default device.

    Returns:
      A ``StepWorkload``; call ``compile()`` before timing.
    """
    rng = np.random.default_rng(seed)
    if isinstance(spec, CnnSpec):
        task = image_task(spec)
        batches = [{"image": rng.integers(0, 256, (spec.batch, 32, 32, 3), np.uint8),
                    "label": rng.integers(0, 10, (spec.batch,), np.int32)}
                   for _ in range(2)]
        return StepWorkload(spec, task.forward, task.init_variables(seed), cnn_optim(),
                            task.selector, batches, items_per_step=spec.batch,
                            unit="images", with_truncation=with_truncation,
                            parallel=parallel)
    model, variables, weights = bert_model(spec.model, seed, spec.dtype)
    shape = (spec.batch, spec.seq_len)
    batches = [{"input_ids": rng.integers(1000, model.config.vocab_size, shape, np.int32),
                "token_type_ids": np.zeros(shape, np.int32),
                "attention_mask": np.ones(shape, np.int32),
                "label": rng.integers(0, 2, (spec.batch,), np.int32)} for _ in range(2)]
    return StepWorkload(spec, forwards.bert_forward(model), variables, bert_optim(),
                        selectors.attention_selector(), batches,
                        items_per_step=spec.batch * spec.seq_len, unit="tokens",
                        with_truncation=with_truncation, total_steps=10_000,
                        weights=weights, parallel=parallel)


def measure(spec, size: str) -> dict:
    """Builds, compiles and times one workload; caches the result in ``common.STEP_CACHE``.

    Args:
      spec: the workload.
      size: window length and repetitions (``WINDOWS``).

    Returns:
      A row: compile seconds, step time statistics (ms), items per second.
    """
    target, reps = WINDOWS[common.check_size(size)]
    work = build(spec)
    compile_s = work.compile()
    first = timing.timed(lambda: work.steps(1))
    steps = timing.steps_for_window(first, target)
    if first > target:
        # Multi-second steps: compile() and `first` already warmed up three steps, and
        # a few two-step windows pin the median well enough.
        warmup, reps = 0, min(reps, 3)
    else:
        warmup = 1
    times = timing.repeat(lambda: work.steps(steps), reps, warmup=warmup)
    per_step = timing.summarize([t / steps for t in times])
    row = {
        "workload": spec.key, "kind": spec.kind, "weights": work.weights,
        "repr_entries": work.layout.num_entries,
        "compile_s": compile_s, "steps_per_window": steps, "reps": reps,
        "step_ms": 1e3 * per_step["median"], "step_ms_q1": 1e3 * per_step["q1"],
        "step_ms_q3": 1e3 * per_step["q3"], "step_ms_min": 1e3 * per_step["min"],
        "step_ms_max": 1e3 * per_step["max"],
        f"{work.unit}_per_s": work.items_per_step / per_step["median"],
        "examples_per_s": spec.batch / per_step["median"],
        "window_s": [float(t) for t in times],
    }
    common.STEP_CACHE[spec.key] = {"step_s": per_step["median"], "row": row,
                                   "items_per_step": work.items_per_step,
                                   "unit": work.unit}
    return row


def step_seconds(spec, size: str) -> tuple[float, str]:
    """Median step seconds of ``spec``: from this process's cache, else measured now.

    Returns:
      (seconds, "cached" or "measured").
    """
    if spec.key in common.STEP_CACHE:
        return common.STEP_CACHE[spec.key]["step_s"], "cached"
    measure(spec, size)
    return common.STEP_CACHE[spec.key]["step_s"], "measured"
