"""The train-step forward of each model family: ``(variables, batch, train, rng) -> (logits, batch_stats)``.

``wormjax.pipeline.steps.make_steps`` (and any step built the same way, such as the
benchmarks') calls a forward of this shape. The forwards live with the models, so a
step can be built from a model alone, without a task and its data sets.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Forward", "bert_apply", "bert_forward", "cnn_apply", "cnn_forward"]

# (variables, batch, train, rng) -> (logits [B, C], new batch_stats)
Forward = Callable[[Any, Any, bool, Any], tuple[Any, Any]]


def cnn_apply(model, variables, images, train: bool, rng):
    """Logits and new BatchNorm statistics of a library CNN.

    Args:
      model: the linen CNN.
      variables: ``{"params": ..., "batch_stats": ...}``.
      images: the input, already normalised [B, H, W, C].
      train: training mode (BN batch statistics, dropout from ``rng``).
      rng: the dropout key (unused in evaluation).

    Returns:
      (logits, batch_stats): the updated statistics while training, else the given ones.
    """
    if train:
        logits, updates = model.apply(variables, images, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": rng})
        return logits, updates["batch_stats"]
    return model.apply(variables, images, train=False), variables["batch_stats"]


def bert_apply(model, variables, batch, train: bool, rng):
    """Classifier logits of a ``BertForSequenceClassification``; dropout only while training.

    Args:
      model: the BERT classifier.
      variables: ``{"params": ...}`` (any ``batch_stats`` are passed through).
      batch: ``input_ids``, ``token_type_ids``, ``attention_mask`` [B, L].
      train: training mode (dropout from ``rng``).
      rng: the dropout key (unused in evaluation).

    Returns:
      (logits [B, C], the unchanged (empty) batch_stats).
    """
    logits = model.apply(
        {"params": variables["params"]}, batch["input_ids"], batch["attention_mask"],
        batch["token_type_ids"], deterministic=not train,
        rngs={"dropout": rng} if train else None)
    return logits, variables.get("batch_stats", {})


def cnn_forward(model, preprocess: Callable[[Any], Any] = lambda images: images) -> Forward:
    """The forward of a CNN reading ``batch["image"]`` through ``preprocess`` (normalisation)."""
    return lambda variables, batch, train, rng: cnn_apply(
        model, variables, preprocess(batch["image"]), train, rng)


def bert_forward(model) -> Forward:
    """The forward of a BERT classifier reading a tokenised batch."""
    return lambda variables, batch, train, rng: bert_apply(model, variables, batch, train, rng)
