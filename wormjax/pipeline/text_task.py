"""The text task: GLUE SST-2 / MRPC / RTE wired to a Hugging Face BERT.

The transformer counterpart of ``image_task``, implementing ``pipeline.task.Task``:
the imported checkpoint (classifier head initialised from the seed), the BERT
forward (``models.forwards.bert_apply``), length-bucketed batches and the
query/key representative selector of the paper's section VI. Every batch of a
bucket has one shape, so each jitted step compiles once per bucket and never
again in later epochs.
"""

from __future__ import annotations

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np

from wormjax import costs
from wormjax import models
from wormjax import selectors as selectors_lib
from wormjax.data import glue as glue_lib
from wormjax.data import text as text_lib
from wormjax.models import forwards
from wormjax.models import hf_import
from wormjax.pipeline import config_checks
from wormjax.pipeline import task as task_lib

__all__ = ["TextTask"]

_DIR_HINT = ("pass --config.data.dir=/path/to/glue (the folder holding SST-2/, MRPC/ "
             "and RTE/ with train.tsv and dev.tsv), or --config.data.source=tfds")
_FLOP_BATCH = 8  # the batch FLOPs are counted at, then divided by


def _check_max_seq_len(max_seq_len: int, limit: int | None, whose: str) -> None:
    """Refuses a max_seq_len longer than the position embeddings ``whose`` has."""
    if limit is not None and max_seq_len > limit:
        raise ValueError(f"data.max_seq_len={max_seq_len} exceeds the {whose} "
                         f"max_position_embeddings={limit}; allowed: 3..{limit}")


class TextTask(task_lib.SplitMembers):
    """BERT sequence classifier + a GLUE task, built from ``config.model`` and ``config.data``."""

    kind = "text"
    # The authors' BERT code kept a per-layer 50% mask on every dense kernel and
    # bias while retraining (their CNN code did not).
    persistent_reference_mask = True

    @staticmethod
    def validate_config(config) -> None:
        """``Task.validate_config``: every field, the checkpoint and the data folders."""
        config_checks.check_config(config)
        data, model = config.data, config.model
        max_seq_len = data.max_seq_len
        checkpoint = model.checkpoint
        if hf_import.looks_like_path(checkpoint):
            folder = os.path.expanduser(checkpoint)
            if not os.path.isdir(folder):
                raise ValueError(
                    f"model.checkpoint={checkpoint!r} is not an existing folder; allowed: a "
                    "Hugging Face checkpoint folder (config.json, model.safetensors, "
                    "vocab.txt) or a Hub id such as 'bert-base-uncased'")
            if not os.path.isfile(os.path.join(folder, "config.json")):
                raise ValueError(f"model.checkpoint={checkpoint!r} has no config.json; "
                                 "it is not a Hugging Face checkpoint folder")
            _check_max_seq_len(max_seq_len, hf_import.max_position_embeddings(folder),
                               "checkpoint's")

        if data.source == "local":
            if not data.dir:
                raise ValueError(f"data.dir is empty but data.source='local': {_DIR_HINT}")
            folder = os.path.expanduser(data.dir)
            if not os.path.isdir(folder):
                raise ValueError(f"data.dir={data.dir!r} is not a folder: {_DIR_HINT}")

    def __init__(self, config):
        self.validate_config(config)
        self.config = config
        data, model_cfg = config.data, config.model
        self.name = glue_lib.glue_task_name(data.name)
        self.checkpoint_dir = hf_import.resolve_checkpoint_dir(
            os.path.expanduser(model_cfg.checkpoint))
        # A Hub id is only resolved here; check its length limit before the
        # data is tokenised and the weights are loaded.
        _check_max_seq_len(data.max_seq_len,
                           hf_import.max_position_embeddings(self.checkpoint_dir),
                           "checkpoint's")
        data_dir = os.path.expanduser(data.dir) if data.dir else None
        train = glue_lib.load_glue(self.name, "train", data.source, data_dir)
        tokenizer = text_lib.load_tokenizer(self.checkpoint_dir)
        max_seq_len = int(data.max_seq_len)
        train_indices = text_lib.balanced_subset_indices(train.labels, data.train_limit, 0)
        self.train_split = text_lib.encode_subset(tokenizer, train, train_indices,
                                                  max_seq_len)
        if data.eval_split == "train":  # the authors' protocol
            # data.eval_limit cuts the evaluated part of the training subset,
            # as it cuts the dev split.
            picked = text_lib.subset_indices(len(train_indices), data.eval_limit, 1)
            # A limit covering the whole subset evaluates it as it is, untokenised again.
            self.eval_split = (self.train_split if len(picked) == len(train_indices) else
                               text_lib.encode_subset(tokenizer, train, train_indices[picked],
                                                      max_seq_len))
        else:
            dev = glue_lib.load_glue(self.name, "dev", data.source, data_dir)
            self.eval_split = text_lib.encode_subset(
                tokenizer, dev, text_lib.subset_indices(len(dev), data.eval_limit, 1),
                max_seq_len)
        self.boundaries = text_lib.bucket_boundaries(
            max_seq_len, smallest=int(data.get("bucket_min_len", 32)))
        self.batch_size = config.optim.batch_size
        self.eval_batch_size = config.optim.eval_batch_size
        # Buckets keep their members across epochs and drop their partial last
        # batch, so the number of batches is the same in every epoch.
        plan = text_lib.text_batch_plan(self.train_split, self.batch_size, seed=config.seed,
                                        epoch=0, boundaries=self.boundaries)
        self.steps_per_epoch = len(plan)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"optim.batch_size={self.batch_size} leaves no full batch in any length "
                f"bucket {self.boundaries} of the {len(self.train_split)} training "
                "examples; lower the batch size or raise data.train_limit")
        self.train_batches_per_length = dict(sorted(
            collections.Counter(length for length, _ in plan).items()))
        self.train_bucket_lengths = tuple(self.train_batches_per_length)

        num_labels = int(model_cfg.num_classes or train.num_labels)
        self._dtype = models.DTYPES[model_cfg.dtype]
        loaded = hf_import.load_hf_bert(
            self.checkpoint_dir, num_labels, rng=int(config.seed), dtype=self._dtype,
            # A checkpoint fine-tuned on another label set gets a fresh head.
            ignore_mismatched_classifier=True)
        self.model, self.bert_config = loaded.model, loaded.config
        self.import_info = loaded.info
        # A config.json without the field: the loader's default applies.
        _check_max_seq_len(max_seq_len, self.bert_config.max_position_embeddings, "model's")
        # Host copies: every run gets fresh device arrays, since the train step
        # donates (deletes) the buffers it is given.
        self._host_params = {int(config.seed): jax.device_get(loaded.variables["params"])}
        self._init = jax.jit(self.model.init)
        self.selector = selectors_lib.attention_selector(
            include_value=bool(config.search.get("include_value", False)))

    @property
    def num_classes(self) -> int:
        """The classifier's outputs (the head's labels)."""
        return self.model.num_labels

    def _params_for_seed(self, seed: int):
        if seed not in self._host_params:
            base = next(iter(self._host_params.values()))
            fresh = self.import_info.initialised
            if fresh:
                # The same draw load_hf_bert makes for rng=seed, compiled once.
                ids = jnp.zeros((1, min(8, self.bert_config.max_position_embeddings)),
                                jnp.int32)
                init = self._init(jax.random.key(seed), ids)["params"]
                by_path = dict(selectors_lib.leaves_with_paths(init))

                def pick(path, leaf):
                    name = selectors_lib.path_str(path)
                    return np.asarray(by_path[name]) if name in fresh else leaf

                base = jax.tree_util.tree_map_with_path(pick, base)
            self._host_params[seed] = base
        return self._host_params[seed]

    def init_variables(self, seed: int):
        """The imported weights, with any head the checkpoint lacks drawn from ``seed``.

        Args:
          seed: the run's seed; EB and WORM arms of a seed get identical variables.

        Returns:
          ``{"params": ..., "batch_stats": {}}`` as new device arrays.
        """
        host = self._params_for_seed(int(seed))
        params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), host)
        return {"params": params, "batch_stats": {}}

    def forward(self, variables, batch, train: bool, rng, model=None):
        """BERT classifier logits and the (empty) batch_stats; dropout only while training.

        ``model`` replaces the task's own BERT (``models.forwards.bert_apply``).
        """
        return forwards.bert_apply(model or self.model, variables, batch, train, rng)

    def train_batches(self, seed: int, epoch: int, start_step: int = 0):
        """The shuffled training batches of ``epoch`` (``steps_per_epoch`` of them).

        Args:
          seed: data-order seed (the run's seed).
          epoch: data epoch; the order depends only on (seed, epoch).
          start_step: batches of the epoch to skip (resuming mid-epoch).

        Returns:
          An iterator of dicts of int32 arrays, [batch_size, bucket length].
        """
        return text_lib.text_batches(self.train_split, self.batch_size, seed=seed,
                                     epoch=epoch, shuffle=True, start_step=start_step,
                                     boundaries=self.boundaries)

    def eval_batches(self):
        """Every evaluation example once, in bucket order, with a 0/1 ``mask``."""
        return text_lib.text_batches(self.eval_split, self.eval_batch_size, shuffle=False,
                                     boundaries=self.boundaries, drop_remainder=False)

    def batch_specs(self) -> dict[str, list[dict]]:
        """Shapes and dtypes of every batch the steps see, from the bucket plans alone.

        Returns:
          ``{"train": [...], "eval": [...]}``, one spec per length bucket in use
          (eval batches carry the 0/1 ``mask`` of their padding rows).
        """
        eval_plan = text_lib.text_batch_plan(
            self.eval_split, self.eval_batch_size, shuffle=False,
            boundaries=self.boundaries, drop_remainder=False)
        eval_lengths = sorted({length for length, _ in eval_plan})
        return {"train": [_batch_spec(self.batch_size, length, with_mask=False)
                          for length in self.train_bucket_lengths],
                "eval": [_batch_spec(self.eval_batch_size, length, with_mask=True)
                         for length in eval_lengths]}

    def _flops_at(self, variables, model, seq_len: int) -> float:
        def apply(v, input_ids):
            # Constant segment ids and attention: what the figures have always counted.
            batch = {"input_ids": input_ids, "token_type_ids": jnp.zeros_like(input_ids),
                     "attention_mask": jnp.ones_like(input_ids)}
            return self.forward(v, batch, False, None, model)[0]

        ids = jax.ShapeDtypeStruct((_FLOP_BATCH, seq_len), jnp.int32)
        return costs.flops_per_example(apply, variables, ids)

    def forward_flops(self, variables, model=None) -> task_lib.ForwardFlops:
        """Eval-forward FLOPs per example, at the longest bucket and per train bucket.

        Batches are padded to their bucket's length, not to the longest, so an
        epoch costs the batch-weighted mean of the per-bucket figures.
        """
        longest = self.boundaries[-1]
        counts = self.train_batches_per_length
        by_length = {longest: self._flops_at(variables, model, longest)}
        for length in counts:
            if length not in by_length:
                by_length[length] = self._flops_at(variables, model, length)
        train = sum(n * by_length[length] for length, n in counts.items()) / sum(
            counts.values())
        return task_lib.ForwardFlops(
            longest=by_length[longest], train=train,
            by_length={length: by_length[length] for length in counts})


def _batch_spec(batch_size: int, length: int, with_mask: bool) -> dict:
    """The abstract ``text_lib.text_batches`` batch of one bucket length."""
    tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
    spec = {"input_ids": tokens, "token_type_ids": tokens, "attention_mask": tokens,
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    if with_mask:
        spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    return spec
