"""The image task: CIFAR-10 (or the digits demo) wired to a library CNN.

It implements ``pipeline.task.CompactableTask``: variables at initialisation,
the forward (``models.forwards.cnn_apply`` on normalised images), batches and
the BatchNorm representative selector. The loop itself knows nothing about images.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from wormjax import costs
from wormjax import models
from wormjax import selectors as selectors_lib
from wormjax.data import images as images_lib
from wormjax.data import pipeline
from wormjax.models import forwards
from wormjax.models import torchvision_import
from wormjax.pipeline import config_checks
from wormjax.pipeline import task as task_lib

__all__ = ["ImageTask"]

_FLOP_BATCH = 8  # the batch FLOPs are counted at, then divided by


class ImageTask(task_lib.SplitMembers):
    """CNN + image data set, built from ``config.model`` and ``config.data``."""

    kind = "image"
    persistent_reference_mask = False  # the authors' CNN code retrained densely

    @staticmethod
    def validate_config(config) -> None:
        """``Task.validate_config``, and that ``model.pretrained`` names a file.

        Raises:
          FileNotFoundError: ``model.pretrained`` names no file (a torchvision
            state dict is wanted).
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
        self.train_split = images_lib.load_image_dataset(
            data.name, "train", data.source, data.dir or None,
            limit=limit(data.train_limit))
        if data.eval_split == "train":  # the authors' protocol
            # data.eval_limit cuts the evaluated part of the training split (a
            # balanced subset of the training subset), as it cuts the test split.
            self.eval_split = images_lib.subset(self.train_split, limit(data.eval_limit))
        else:
            self.eval_split = images_lib.load_image_dataset(
                data.name, "test", data.source, data.dir or None,
                limit=limit(data.eval_limit))
        if config.optim.batch_size > len(self.train_split):
            raise ValueError(
                f"optim.batch_size={config.optim.batch_size} exceeds the "
                f"{len(self.train_split)} training examples")
        num_classes = model_cfg.num_classes or self.train_split.num_classes
        self.model = models.create_cnn(
            model_cfg.name, num_classes, model_cfg.width, model_cfg.dtype,
            bn_scale_init=model_cfg.get("bn_scale_init", 1.0))
        self.name = data.name
        self.selector = selectors_lib.batchnorm_selector()
        self.batch_size = config.optim.batch_size
        self.eval_batch_size = config.optim.eval_batch_size
        self.steps_per_epoch = pipeline.steps_per_epoch(len(self.train_split),
                                                        self.batch_size)
        self._scheme = data.normalization
        self._dtype = models.DTYPES[model_cfg.dtype]
        # One jitted init for every run of the experiment: compiled once.
        self._init = jax.jit(functools.partial(self.model.init, train=False))

    @property
    def num_classes(self) -> int:
        """The CNN's classifier outputs."""
        return self.model.num_classes

    @property
    def input_shape(self):
        """One input example, batch axis first: (1, H, W, C)."""
        return (1,) + self.train_split.images.shape[1:]

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
        x = pipeline.normalize(batch["image"], self._scheme, self._dtype)
        return forwards.cnn_apply(model or self.model, variables, x, train, rng)

    def train_batches(self, seed: int, epoch: int, start_step: int = 0):
        """The shuffled (and, if configured, augmented) batches of ``epoch``."""
        return pipeline.train_batches(self.train_split, self.batch_size, seed=seed,
                                      epoch=epoch, augment=self.config.data.augment,
                                      start_step=start_step)

    def eval_batches(self):
        """Every evaluation image once, the last batch padded with a 0/1 ``mask``."""
        return pipeline.eval_batches(self.eval_split, self.eval_batch_size)

    def batch_specs(self) -> dict[str, list[dict]]:
        """Shapes and dtypes of every batch the steps see: one train, one eval shape.

        Batches are fixed-size (the train split drops its partial last batch, the
        eval split pads it and adds a 0/1 ``mask``), so no data is read.
        """
        spec = jax.ShapeDtypeStruct
        image_shape = self.input_shape[1:]
        train, evals = self.batch_size, self.eval_batch_size
        # The dtypes ImageDataset enforces: uint8 images, int32 labels.
        return {"train": [{"image": spec((train,) + image_shape, jnp.uint8),
                           "label": spec((train,), jnp.int32)}],
                "eval": [{"image": spec((evals,) + image_shape, jnp.uint8),
                          "label": spec((evals,), jnp.int32),
                          "mask": spec((evals,), jnp.float32)}]}

    def forward_flops(self, variables, model=None) -> task_lib.ForwardFlops:
        """Eval-forward FLOPs per example; every batch has one shape, so one figure."""
        images = jax.ShapeDtypeStruct((_FLOP_BATCH,) + self.input_shape[1:], jnp.uint8)
        flops = costs.flops_per_example(
            lambda v, x: self.forward(v, {"image": x}, False, None, model)[0],
            variables, images)
        return task_lib.ForwardFlops(longest=flops, train=flops, by_length={})

    def compact_model(self, channels):
        """The task's CNN narrowed to explicit per-BatchNorm channel counts."""
        return self.model.clone(channels=tuple(int(c) for c in channels))
