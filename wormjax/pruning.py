"""Pruning after the ticket is found (docs/algorithm.md section 4).

Every function works on a copy: the searched model stays available.

- ``mask``: zero the pruned representative entries (BatchNorm scale and bias
  of pruned channels, or pruned query/key elements) and keep them at zero
  while retraining, through a persistent parameter mask.
- ``reference``: what the authors' CNN code did: per-tensor L1-magnitude
  unstructured pruning of every conv and dense kernel, every dense bias and
  every BatchNorm scale, applied once, then dense retraining (no mask).
  ``dense_layer_mask`` gives the authors' BERT variant: the same per-tensor
  rule on every dense kernel and bias, kept as a persistent mask.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from wormjax import _validate
from wormjax import masks
from wormjax import selectors as selectors_lib

__all__ = ["PRUNING_MODES", "Pruned", "ticket_param_mask", "per_tensor_mask",
           "reference_targets", "apply_param_mask", "prune"]

PRUNING_MODES = ("mask", "reference", "structured")


class Pruned(NamedTuple):
    """A pruned copy: new params, and the persistent mask (None = no mask)."""

    params: Any
    param_mask: Any | None


def ticket_param_mask(layout: selectors_lib.TicketLayout, params, keep_flat):
    """The persistent parameter mask of a ticket: 0 where the ticket prunes, else 1.

    Args:
      layout: the ticket's layout (``selector(params)``).
      params: the parameters, any tree the layout reads (a linen params dict,
        a pure ``nnx.State``); the mask has its structure.
      keep_flat: the ticket's flat bool keep mask (``eb_state.newest_mask``).

    Returns:
      A float32 pytree shaped like ``params``: 0 on the pruned representative
      entries and their companions (BatchNorm scale and bias of pruned
      channels), 1 everywhere else. Multiply it in after every retraining step
      (:func:`apply_param_mask`) to keep the pruned entries at zero.
    """
    return layout.map_masked(
        params, keep_flat, lambda leaf, keep: keep.astype(jnp.float32),
        untouched=lambda leaf: jnp.ones(jnp.shape(leaf), jnp.float32))


def per_tensor_mask(leaf: jax.Array, prune_ratio: float) -> jax.Array:
    """The section-1 rule applied to one tensor alone (per-tensor L1 pruning)."""
    return jnp.reshape(
        masks.flat_magnitude_mask(jnp.abs(jnp.ravel(leaf)).astype(jnp.float32),
                                  prune_ratio), jnp.shape(leaf))


def reference_targets(params, include_conv_bias: bool = False) -> set[str]:
    """Paths the reference mode prunes: conv/dense kernels, dense biases, BN scales.

    A bias is a dense bias when its sibling kernel is 2-D; conv biases (4-D
    sibling kernels) and BatchNorm biases are left alone, as the authors did.
    """
    flat = dict(selectors_lib.leaves_with_paths(params))
    targets = set()
    for path, leaf in flat.items():
        parent, _, name = path.rpartition("/")
        sibling_kernel = flat.get(f"{parent}/kernel" if parent else "kernel")
        if name == "kernel":
            targets.add(path)
        elif name == "bias" and sibling_kernel is not None:
            if jnp.ndim(sibling_kernel) == 2 or include_conv_bias:
                targets.add(path)
    bn = selectors_lib.batchnorm_selector(include_bias=False)
    try:
        targets.update(bn(params).paths)
    except ValueError:
        pass  # a model without BatchNorm (BERT)
    return targets


def _per_tensor(params, targets: set[str], prune_ratio: float):
    def visit(path, leaf):
        if selectors_lib.path_str(path) in targets and jnp.size(leaf) > 1:
            return per_tensor_mask(leaf, prune_ratio).astype(jnp.float32)
        return jnp.ones(jnp.shape(leaf), jnp.float32)

    return jax.tree_util.tree_map_with_path(visit, params)


def apply_param_mask(params, param_mask):
    """``params * param_mask`` leaf by leaf, in each parameter's own dtype.

    Args:
      params: a parameter pytree.
      param_mask: a 0/1 pytree of the same structure (:func:`ticket_param_mask`,
        ``Pruned.param_mask``).

    Returns:
      The masked parameters; call it after each optimizer step of retraining.
    """
    return jax.tree_util.tree_map(lambda p, m: p * m.astype(p.dtype), params,
                                  param_mask)


def prune(mode: str, params, *, layout: selectors_lib.TicketLayout | None = None,
          keep_flat: jax.Array | None = None, prune_ratio: float = 0.5,
          persistent_reference_mask: bool = False) -> Pruned:
    """Prunes a copy of ``params``.

    Args:
      mode: "mask" or "reference" ("structured" builds a new model; see
        ``wormjax.structured``).
      params: the searched model's parameters (left unchanged).
      layout: the representative layout (``mask`` mode).
      keep_flat: the ticket's flat keep mask (``mask`` mode).
      prune_ratio: the per-tensor fraction pruned in ``reference`` mode.
      persistent_reference_mask: keep the reference mask during retraining
        (the authors' BERT code did; their CNN code did not).

    Returns:
      ``Pruned(params, param_mask)``.
    """
    _validate.one_of("pruning.mode", mode, ("mask", "reference"))
    if mode == "mask":
        if layout is None or keep_flat is None:
            raise ValueError("mask pruning needs the ticket layout and keep mask")
        param_mask = ticket_param_mask(layout, params, keep_flat)
        return Pruned(apply_param_mask(params, param_mask), param_mask)
    _validate.open_interval("prune_ratio", prune_ratio, 0.0, 1.0)
    param_mask = _per_tensor(params, reference_targets(params), prune_ratio)
    return Pruned(apply_param_mask(params, param_mask),
                  param_mask if persistent_reference_mask else None)
