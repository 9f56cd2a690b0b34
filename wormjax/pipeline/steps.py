"""Jitted train and eval steps: one compilation each, no host sync inside.

Metrics are summed on the device into a small accumulator vector
``[loss_sum, correct, count]`` that the loop reads only at its logging
interval, so the host never waits on the device between steps.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wormjax import truncation as truncation_lib
from wormjax.pipeline.state import TrainState

__all__ = ["Forward", "StepFns", "make_steps", "zero_metrics", "read_metrics",
           "CompileCounter", "inactive_truncation"]

# forward(variables, batch, train, rng) -> (logits, new_batch_stats)
Forward = Callable[[dict, dict, bool, jax.Array], tuple[jax.Array, Any]]


class CompileCounter:
    """Counts traces of the jitted functions (each trace is one compilation)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def hit(self, name: str) -> None:
        """Counts one trace of ``name`` (called from inside the traced function)."""
        self.counts[name] = self.counts.get(name, 0) + 1


def zero_metrics() -> jax.Array:
    """An empty accumulator.

    Entries: loss sum, correct predictions, examples, and for class 1 against
    the rest the true positives, false positives and false negatives (the F1
    of binary tasks such as MRPC).
    """
    return jnp.zeros((6,), jnp.float32)


def read_metrics(acc) -> dict[str, float]:
    """Host view of an accumulator (this is the sync point)."""
    loss_sum, correct, count, tp, fp, fn = (float(x) for x in jax.device_get(acc))
    count = max(count, 1.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"loss": loss_sum / count, "accuracy": correct / count, "f1": f1}


class StepFns(NamedTuple):
    """The jitted steps of one model and optimizer (``make_steps``)."""

    train: Callable  # (state, batch, truncation, acc) -> (state, acc)
    train_masked: Callable  # same plus param_mask, keeping pruned entries at 0
    eval: Callable  # (params, batch_stats, batch, acc) -> acc


def _batch_metrics(logits, labels, weights):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    predicted = jnp.argmax(logits, -1)
    correct = (predicted == labels).astype(jnp.float32)
    pred_pos = (predicted == 1).astype(jnp.float32)
    true_pos = (labels == 1).astype(jnp.float32)
    return jnp.stack([jnp.sum(losses * weights), jnp.sum(correct * weights),
                      jnp.sum(weights), jnp.sum(pred_pos * true_pos * weights),
                      jnp.sum(pred_pos * (1 - true_pos) * weights),
                      jnp.sum((1 - pred_pos) * true_pos * weights)])


def make_steps(forward: Forward, tx, counter: CompileCounter | None = None,
               donate: bool = True) -> StepFns:
    """Builds the jitted steps for a model's forward function and optimizer.

    Args:
      forward: applies the model to a batch (see ``Forward``).
      tx: the optimizer, accepting ``truncation=`` at update time.
      counter: records each compilation by step name.
      donate: donate the state and accumulator buffers (no copies per step).

    Returns:
      ``StepFns``; the truncation and parameter mask are runtime arguments,
      so a new mask, r or trigger never recompiles anything.
    """
    counter = counter or CompileCounter()

    def train_step(state: TrainState, batch, truncation, acc, param_mask=None):
        rng = jax.random.fold_in(state.rng, state.step)
        # Filler rows of a padded batch (mask 0) carry no loss.
        weights = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, new_stats = forward(variables, batch, True, rng)
            losses = optax.softmax_cross_entropy_with_integer_labels(
                logits, batch["label"])
            loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
            return loss, (logits, new_stats)

        (_, (logits, new_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                       truncation=truncation)
        params = optax.apply_updates(state.params, updates)
        if param_mask is not None:
            params = jax.tree_util.tree_map(
                lambda p, m: p * m.astype(p.dtype), params, param_mask)
        acc = acc + _batch_metrics(logits, batch["label"], weights)
        new_state = state.replace(step=state.step + 1, params=params,
                                  batch_stats=new_stats, opt_state=opt_state)
        return new_state, acc

    def plain(state, batch, truncation, acc):
        counter.hit("train_step")
        return train_step(state, batch, truncation, acc)

    def masked(state, batch, truncation, acc, param_mask):
        counter.hit("train_step_masked")
        return train_step(state, batch, truncation, acc, param_mask)

    def eval_step(params, batch_stats, batch, acc):
        counter.hit("eval_step")
        variables = {"params": params, "batch_stats": batch_stats}
        logits, _ = forward(variables, batch, False, jax.random.PRNGKey(0))
        return acc + _batch_metrics(logits, batch["label"], batch["mask"])

    donate_args = (0, 3) if donate else ()
    return StepFns(
        train=jax.jit(plain, donate_argnums=donate_args),
        train_masked=jax.jit(masked, donate_argnums=donate_args),
        eval=jax.jit(eval_step, donate_argnums=(3,) if donate else ()),
    )


def inactive_truncation(num_entries: int) -> truncation_lib.WormTruncationState:
    """A truncation that touches nothing (retraining, EB Train)."""
    return truncation_lib.WormTruncationState(
        keep=jnp.ones((num_entries,), jnp.bool_),
        ratio=jnp.ones((), jnp.float32),
        active=jnp.zeros((), jnp.bool_),
    )
