"""Structured channel pruning of the library CNNs: a narrower model of the same class.

docs/algorithm.md section 4, ``pruning.mode = "structured"``. The ticket's flat keep mask
over the BatchNorm scales (``batchnorm_selector`` layout) goes through the generic
path, ``wormjax.surgery.compact``: the traced channel graph couples each BatchNorm
with its conv's filters, the next conv's (or shortcut conv's, or the classifier's
flattened) input slices and every BatchNorm summed into the same residual stream.
The library registers each CNN's ``channels=`` constructor, so the compact model is
the same class, narrower, and computes exactly the dense model with the pruned
channels silenced (BN scale and bias zeroed).

- Floor: no layer keeps fewer than ``min_channels`` channels; where the mask keeps
  fewer, it adds its largest-|scale| pruned channels (lowest index first on ties).
- ResNet shortcuts: every BatchNorm of a residual stream keeps the *union* of the
  stream's masks (a channel survives if any member keeps it; the floor ranks channels
  by their largest |scale| in the stream). The union never removes a channel the
  ticket kept, at the cost of keeping more than the ticket's share of the residual
  stream. A block's inner ``bn1`` is free and follows its own mask.
- ``channel_multiple`` (off by default) rounds every count up to a multiple, adding the
  largest-|scale| pruned channels: convolutions can run slower on unaligned counts.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wormjax import compact_io
from wormjax import costs
from wormjax import selectors as selectors_lib
from wormjax import surgery
from wormjax.compact_io import load_compact
from wormjax.compact_io import read_compact_meta
from wormjax.compact_io import save_compact
from wormjax.models import common
from wormjax.costs import count_params
from wormjax.variables import path_str

__all__ = ["compact_channels", "build_compact", "count_params", "forward_flops",
           "conv_dense_macs", "live_params", "save_compact", "load_compact",
           "read_compact_meta"]

# Every supported CNN accepts it (VGG needs 2**5 pixels); the plan does not depend on
# the resolution, and tracing is abstract.
_TRACE_INPUT = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)


def _family(model):
    if type(model) not in compact_io.LIBRARY_CNNS.values():
        raise ValueError(f"structured pruning supports {', '.join(compact_io.LIBRARY_CNNS)}"
                         f"; got {type(model).__name__}")


def _bn_name(layout_path: str) -> str:
    """'params/layer1_0/bn2/scale' or 'layer1_0/bn2/scale' -> 'layer1_0/bn2'."""
    return layout_path.removeprefix("params/").removesuffix("/scale")


def _check_layout(model, layout: selectors_lib.TicketLayout) -> list[tuple[str, int]]:
    """The model's (BN path, channels) in definition order, checked with ``layout``."""
    expected = [(common.path_str(p), n) for p, n in common.bn_layout(model)]
    got = [(_bn_name(e.path), e.size) for e in layout.entries]
    if sorted(got) != sorted(expected):
        raise ValueError(
            f"the ticket layout does not match {type(model).__name__}'s BatchNorm "
            f"layers (a mask for another architecture or width?): layout-only entries "
            f"{sorted(set(got) - set(expected))[:4]}, model-only layers "
            f"{sorted(set(expected) - set(got))[:4]}")
    return expected


def _decide(model, layout, keep_flat, variables, floor):
    """(BN layout, kept indices per BN path, floored BN paths, shortcut rule)."""
    _family(model)
    bn = _check_layout(model, layout)
    keep = np.asarray(keep_flat)
    if keep.shape != (layout.num_entries,):
        raise ValueError(f"keep mask has shape {keep.shape}; the ticket layout needs "
                         f"N = {layout.num_entries} entries (one per BN channel)")
    abstract = common.abstract_variables(model)
    if variables is None:
        variables = abstract
    elif "params" not in variables:  # bare params: the statistics only need shapes
        variables = {**abstract, "params": variables}
    ticket = {f"params/{_bn_name(e.path)}/scale": keep[e.offset:e.offset + e.size]
              for e in layout.entries}
    plan = surgery.channel_plan(model, variables, ticket, _TRACE_INPUT,
                                min_channels=floor[0], channel_multiple=floor[1])
    kept = {p: np.flatnonzero(plan.leaf_keep[f"params/{p}/scale"][0]) for p, _ in bn}
    floored = [p for p, _ in bn if f"params/{p}/scale" in plan.floored]
    return bn, kept, floored, ("union" if plan.groups else None), plan


def compact_channels(model: nn.Module, layout: selectors_lib.TicketLayout, keep_flat,
                     *, params=None, min_channels: int = 1, channel_multiple: int = 1):
    """Per-BatchNorm channels kept by the ticket, after the floor and shortcut rules.

    Args:
      model: the dense model (CIFAR or torchvision VGG-11 / ResNet-18).
      layout: ``batchnorm_selector()`` layout of the dense model's params.
      keep_flat: the ticket's flat keep mask (bool or 0/1), length ``num_entries``.
      params: the dense params (or variables): their BN |scale| picks the channels the
        floor adds to a layer; without them it adds the lowest-index ones.
      min_channels: the fewest channels any layer keeps.
      channel_multiple: round each layer's count up to a multiple of this (at most the
        dense count), adding its largest-|scale| pruned channels; 1 = off.

    Returns:
      ``(channels, kept)``: the compact model's ``channels`` override and, in the same
      (definition) order, a sorted int index array of the kept channels of each BN.
    """
    bn, kept, _, _, _ = _decide(model, layout, keep_flat, params,
                             (min_channels, channel_multiple))
    return tuple(int(kept[p].size) for p, _ in bn), tuple(kept[p] for p, _ in bn)


def build_compact(model: nn.Module, variables, layout: selectors_lib.TicketLayout,
                  keep_flat, *, min_channels: int = 1, channel_multiple: int = 1):
    """Builds the narrower model holding only the ticket's channels, and its weights.

    Args:
      model: the dense model (one of the library CNNs).
      variables: its ``{'params', 'batch_stats'}``; left unchanged.
      layout: ``batchnorm_selector()`` layout of ``variables['params']``.
      keep_flat: the ticket's flat keep mask.
      min_channels, channel_multiple: as in ``compact_channels``.

    Returns:
      ``(compact_model, compact_variables, info)``: the same class with the kept
      ``channels`` (other fields unchanged), the copied variables, and ``info`` with
      ``channels``, ``channels_dense``, ``kept`` (index arrays), ``bn_paths``,
      ``floored`` (layers topped up to the floor), ``shortcut_rule``, ``bn_channels``
      (kept, total) and ``params_dense``/``params_compact``.
    """
    _family(model)
    compact_io.check_variables(model, variables)
    bn, kept, floored, rule, plan = _decide(model, layout, keep_flat, variables,
                                            (min_channels, channel_multiple))
    small = surgery.from_plan(model, variables, plan, _TRACE_INPUT)
    channels = tuple(int(kept[p].size) for p, _ in bn)
    info = {"channels": channels, "channels_dense": tuple(n for _, n in bn),
            "kept": tuple(kept[p] for p, _ in bn), "bn_paths": tuple(p for p, _ in bn),
            "floored": tuple(floored), "shortcut_rule": rule,
            "bn_channels": (sum(channels), sum(n for _, n in bn)),
            "params_dense": count_params(variables),
            "params_compact": small.num_params}
    return small.module, small.variables, info


def live_params(model: nn.Module, variables, layout: selectors_lib.TicketLayout,
                keep_flat) -> int:
    """Parameters a channel ticket leaves computing in mask mode (issue 15 item 4).

    Zeroing a pruned channel's BatchNorm scale and bias also makes its conv filter
    and every input slice that reads it dead, which counting non-zero entries misses:
    this is the count of the compact network (``build_compact``'s
    ``params_compact``) with the floor at one channel. In a residual stream a
    channel lives while any summed BatchNorm keeps it (the union rule), so a filter
    feeding only a silenced member still counts: an upper bound there.

    Args:
      model: the dense library CNN.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
      layout: ``batchnorm_selector()`` layout of its params.
      keep_flat: the ticket's flat keep mask.

    Returns:
      The number of live 'params' entries.
    """
    plan = _decide(model, layout, keep_flat, variables, (1, 1))[4]
    tree = variables["params"] if "params" in variables else variables
    total = 0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = list(np.shape(leaf))
        for axis, mask in plan.leaf_keep[f"params/{path_str(key_path)}"].items():
            shape[axis] = int(np.sum(mask))
        total += math.prod(shape)
    return int(total)


def forward_flops(model: nn.Module, variables, input_shape: Sequence[int]) -> float:
    """Eval-forward FLOPs per example from XLA's cost analysis; training costs ~3x.

    Args:
      model: the model.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
      input_shape: the batch shape (B, H, W, C) compiled for; the count is divided by B.

    Returns:
      FLOPs per example, or nan where the backend reports none.
    """
    return costs.flops_per_example(lambda v, x: model.apply(v, x, train=False), variables,
                                   jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))


# The analytic conv/dense count lives with the other costs.
conv_dense_macs = costs.conv_dense_macs


def _narrower(model, shapes: dict):
    """The library CNN with each BatchNorm's compact channel count (``channels``)."""
    return model.clone(channels=tuple(
        int(shapes[f"params/{common.path_str(p)}/scale"][0])
        for p, _ in common.bn_layout(model)))


# wormjax.compact builds these as real narrower modules, not as a sliced jaxpr.
for _cls in compact_io.LIBRARY_CNNS.values():
    surgery.register_narrower(_cls, _narrower)
