"""Image classification task: CIFAR-10 (or the digits demo) with a Flax CNN.

A task gives the run loop everything model- and data-specific: variables at
initialisation, the forward function, batches and the representative
selector. The loop itself knows nothing about images.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from wormjax.pipeline import config_checks
from wormjax import models
from wormjax import selectors as selectors_lib
from wormjax.data import images as images_lib
from wormjax.data import pipeline
from wormjax.models import torchvision_import
from wormjax.pipeline import divergence

__all__ = ["ImageTask", "forward_flops"]


def forward_flops(apply_fn, variables, example_batch) -> float:
    """Forward FLOPs per example from XLA's cost analysis of the eval forward."""
    compiled = jax.jit(apply_fn).lower(variables, example_batch).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", float("nan")))
    return flops / example_batch.shape[0]


class ImageTask:
    """CNN + image data set, built from ``config.model`` and ``config.data``."""

    kind = "image"
    persistent_reference_mask = False  # the authors' CNN code retrained densely

    @staticmethod
    def validate_config(config) -> None:
        """Checks every field, and that the pretrained file exists, before any data is read.

        Args:
          config: the experiment ConfigDict (``task="image"``).

        Raises:
          ValueError: naming the bad field, its value and what is allowed.
          FileNotFoundError: ``model.pretrained`` names no file.
        """
        config_checks.check_config(config)
        pretrained = config.model.pretrained
        if pretrained and not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"model.pretrained={pretrained!r} is not a file; give a "
                "torchvision state dict (.safetensors, or .pth with torch installed)")

    def __init__(self, config):
        data, model_cfg = config.data, config.model
        self.validate_config(config)
        self.config = config
        limit = lambda n: int(n) if n else None  # noqa: E731 - 0 means all
        self.train_ds = images_lib.load_image_dataset(
            data.name, "train", data.source, data.dir or None,
            limit=limit(data.train_limit))
        if data.eval_split == "train":
            self.eval_ds = self.train_ds
        else:
            self.eval_ds = images_lib.load_image_dataset(
                data.name, "test", data.source, data.dir or None,
                limit=limit(data.eval_limit))
        if config.optim.batch_size > len(self.train_ds):
            raise ValueError(
                f"optim.batch_size={config.optim.batch_size} exceeds the "
                f"{len(self.train_ds)} training examples")
        num_classes = model_cfg.num_classes or self.train_ds.num_classes
        self.model = models.create_cnn(
            model_cfg.name, num_classes, model_cfg.width, model_cfg.dtype,
            bn_scale_init=model_cfg.get("bn_scale_init", 1.0))
        self.name = data.name
        self.selector = selectors_lib.batchnorm_selector()
        self.batch_size = config.optim.batch_size
        self.eval_batch_size = config.optim.eval_batch_size
        self.steps_per_epoch = pipeline.steps_per_epoch(len(self.train_ds),
                                                        self.batch_size)
        self._scheme = data.normalization
        self._dtype = models.DTYPES[model_cfg.dtype]
        # One jitted init for every run of the experiment: compiled once.
        self._init = jax.jit(functools.partial(self.model.init, train=False))

    @property
    def num_train_examples(self) -> int:
        return len(self.train_ds)

    @property
    def num_eval_examples(self) -> int:
        return len(self.eval_ds)

    @property
    def chance_accuracy(self) -> float | None:
        """Eval accuracy of always predicting the most frequent class (divergence)."""
        return divergence.chance_accuracy(self.eval_ds.labels)

    @property
    def input_shape(self):
        return (1,) + self.train_ds.images.shape[1:]

    def init_variables(self, seed: int):
        """The initial variables: random from ``seed``, or imported weights."""
        sample = jnp.zeros(self.input_shape, jnp.float32)
        variables = self._init(jax.random.PRNGKey(seed), sample)
        if self.config.model.pretrained:
            variables = torchvision_import.load_torchvision_weights(
                self.model, self.config.model.pretrained,
                replace_head=self.config.model.replace_head,
                rng=jax.random.PRNGKey(seed), input_shape=self.input_shape)
        return {"params": variables["params"],
                "batch_stats": variables.get("batch_stats", {})}

    def forward(self, variables, batch, train: bool, rng, model=None):
        """Logits and new BatchNorm statistics; ``model`` replaces the task's own
        (the compact model of structured pruning)."""
        model = model or self.model
        x = pipeline.normalize(batch["image"], self._scheme, self._dtype)
        if train:
            logits, updates = model.apply(
                variables, x, train=True, mutable=["batch_stats"],
                rngs={"dropout": rng})
            return logits, updates["batch_stats"]
        return model.apply(variables, x, train=False), variables["batch_stats"]

    def train_batches(self, seed: int, epoch: int, start_step: int = 0):
        return pipeline.train_batches(self.train_ds, self.batch_size, seed=seed,
                                      epoch=epoch, augment=self.config.data.augment,
                                      start_step=start_step)

    def eval_batches(self):
        return pipeline.eval_batches(self.eval_ds, self.eval_batch_size)

    def warmup_batches(self) -> dict[str, list[dict]]:
        """One batch of each shape the steps see: the first train and eval batches."""
        return {"train": [next(iter(self.train_batches(self.config.seed, 0)))],
                "eval": [next(iter(self.eval_batches()))]}

    def forward_flops_per_example(self, variables, model=None) -> float:
        batch = np.zeros((8,) + self.input_shape[1:], np.uint8)
        return forward_flops(
            lambda v, x: self.forward(v, {"image": x}, False, None, model)[0],
            variables, jnp.asarray(batch))

    def train_forward_flops_per_example(self, variables, longest: float) -> float:
        """Forward FLOPs per trained example: every batch has one shape, so ``longest``.

        Args:
          variables: unused (the text task's signature).
          longest: ``forward_flops_per_example(variables)``.
        """
        del variables
        return longest

    def compact_model(self, channels):
        """The task's CNN narrowed to explicit per-BatchNorm channel counts."""
        return self.model.clone(channels=tuple(int(c) for c in channels))
