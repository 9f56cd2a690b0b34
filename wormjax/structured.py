"""Structured channel pruning: a narrower CNN that holds only the ticket's channels.

docs/algorithm.md section 4, ``pruning.mode = "structured"``. The ticket's flat keep mask
over the BatchNorm scales (``batchnorm_selector`` layout) picks each BatchNorm layer's
channels; ``build_compact`` builds the same class with those counts (``channels``) and
copies the kept conv filters, the input slices of the next conv or shortcut conv, the
BatchNorm parameters and statistics and the classifier rows. A channel whose BN scale
and bias are zero is zero after the ReLU (or adds zero to a residual sum), so the
compact model computes exactly the dense model with the pruned channels silenced.

- Floor: no layer keeps fewer than ``min_channels`` channels; where the mask keeps
  fewer, it adds its largest-|scale| pruned channels (lowest index first on ties).
- ResNet shortcuts: the tensors a residual addition sums must share one channel set, so
  every BatchNorm of a ``resnet.residual_groups()`` group keeps the *union* of the
  group's masks: a residual-stream channel survives if any member keeps it, and the
  floor ranks channels by their largest |scale| in the group. The union never removes
  a channel the ticket kept, at the cost of keeping more than the ticket's share of the
  residual stream. A block's inner ``bn1`` is free and follows its own mask.
- ``channel_multiple`` (off by default) rounds every count up to a multiple, adding the
  largest-|scale| pruned channels: convolutions can run slower on unaligned counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from wormjax import _validate
from wormjax.pipeline import report
from wormjax import selectors as selectors_lib
from wormjax import surgery
from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg

__all__ = ["compact_channels", "build_compact", "count_params", "forward_flops",
           "conv_dense_macs", "save_compact", "load_compact", "read_compact_meta"]

_FORMAT = "wormjax.compact_cnn/1"


def _vgg_slices(model, kept: dict[str, np.ndarray], dense: dict[str, int]) -> dict:
    """{module: (kept input, kept output channels)}; None keeps the whole axis."""
    # conv{i} reads bn{i-1}'s channels and writes bn{i}'s; the head reads the last.
    slices, prev, last = {}, None, len(vgg.conv_widths(model.cfg)) - 1
    for i in range(last + 1):
        slices[f"conv{i}"] = (prev, kept[f"bn{i}"])
        prev = kept[f"bn{i}"]
    pooled_hw = getattr(model, "pooled_hw", None)
    if pooled_hw is None:
        slices[model.head_name] = (prev, None)
        return slices
    # torchvision: fc1 reads the 7x7 map flattened in (H, W, C) order, so the row of
    # channel c at pixel (h, w) is (h * 7 + w) * C + c.
    pixels = np.arange(pooled_hw[0] * pooled_hw[1])[:, None]
    slices["fc1"] = ((pixels * dense[f"bn{last}"] + prev[None, :]).ravel(), None)
    slices["fc2"] = slices[model.head_name] = (None, None)
    return slices


def _resnet_slices(model, kept: dict[str, np.ndarray], dense: dict[str, int]) -> dict:
    """A block's conv1 and shortcut conv read the residual stream entering the block."""
    del model, dense
    slices, stream = {"conv1": (None, kept["bn1"])}, kept["bn1"]
    blocks = dict.fromkeys(p[0] for p in resnet.bn_paths() if len(p) == 2)
    for block in blocks:
        mid, out = kept[f"{block}/bn1"], kept[f"{block}/bn2"]
        slices[f"{block}/conv1"] = (stream, mid)
        slices[f"{block}/conv2"] = (mid, out)
        if f"{block}/shortcut_bn" in kept:
            slices[f"{block}/shortcut_conv"] = (stream, kept[f"{block}/shortcut_bn"])
        stream = out
    slices["fc"] = (stream, None)
    return slices


# Exact classes, (slices, residual groups): a subclass may wire its layers differently.
_RESNET = (_resnet_slices, lambda: [[common.path_str(p) for p in group]
                                     for group in resnet.residual_groups()])
_FAMILIES = {vgg.CifarVGG11: (_vgg_slices, list), vgg.CifarVGG16: (_vgg_slices, list),
             vgg.TorchvisionVGG11BN: (_vgg_slices, list),
             resnet.CifarResNet18: _RESNET, resnet.TorchvisionResNet18: _RESNET}
_CLASSES = {cls.__name__: cls for cls in _FAMILIES}


def _family(model):
    if type(model) not in _FAMILIES:
        raise ValueError(f"structured pruning supports {', '.join(_CLASSES)}; got "
                         f"{type(model).__name__}")
    return _FAMILIES[type(model)]


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


def _with_floor(keep: np.ndarray, score: np.ndarray, floor: tuple[int, int]):
    """(kept indices, floored?) after topping ``keep`` up to the floor and multiple."""
    count, (least, multiple) = int(keep.sum()), floor
    missing = min(-(-max(least, count) // multiple) * multiple, keep.size) - count
    if missing <= 0:
        return np.flatnonzero(keep), False
    # Stable sort on -score: ties go to the lowest index.
    added = [i for i in np.argsort(-score, kind="stable") if not keep[i]][:missing]
    return np.union1d(np.flatnonzero(keep), added), count < least


def _decide(model, layout, keep_flat, params, floor):
    """(BN layout, kept indices per BN path, floored BN paths, shortcut rule)."""
    _, groups_fn = _family(model)
    _validate.at_least("min_channels", floor[0], 1)
    _validate.at_least("channel_multiple", floor[1], 1)
    bn = _check_layout(model, layout)
    keep = np.asarray(keep_flat)
    if keep.shape != (layout.num_entries,):
        raise ValueError(f"keep mask has shape {keep.shape}; the ticket layout needs "
                         f"N = {layout.num_entries} entries (one per BN channel)")
    masks = {_bn_name(e.path): keep[e.offset:e.offset + e.size] != 0
             for e in layout.entries}
    scales = {path: np.zeros(n, np.float32) for path, n in bn}
    if params is not None:
        tree = params["params"] if "params" in params else params
        for path, n in bn:
            leaf = functools.reduce(lambda t, key: t[key], path.split("/"), tree)
            scales[path] = np.abs(np.asarray(leaf["scale"], np.float32))
            if scales[path].shape != (n,):
                raise ValueError(f"params do not match the model: {path}/scale has "
                                 f"shape {scales[path].shape}, the model {(n,)}")
    kept, floored, groups = {}, [], groups_fn()
    for group in groups:
        union = np.logical_or.reduce([masks[p] for p in group])
        score = np.max([scales[p] for p in group], axis=0)
        indices, was_floored = _with_floor(union, score, floor)
        kept.update({p: indices for p in group})
        floored += group if was_floored else []
    for path, _ in bn:
        if path not in kept:
            kept[path], was_floored = _with_floor(masks[path], scales[path], floor)
            floored += [path] if was_floored else []
    return bn, kept, floored, ("union" if groups else None)


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
    bn, kept, _, _ = _decide(model, layout, keep_flat, params,
                             (min_channels, channel_multiple))
    return tuple(int(kept[p].size) for p, _ in bn), tuple(kept[p] for p, _ in bn)


def _check_variables(model, variables) -> None:
    _family(model)
    want = jax.tree_util.tree_map(lambda s: s.shape, common.abstract_variables(model))
    if want != jax.tree_util.tree_map(np.shape, variables):
        raise ValueError(
            f"variables do not match {type(model).__name__}(width={model.width}, "
            f"channels={model.channels}): different parameter tree or shapes")


def _slice_leaf(leaf, in_idx, out_idx):
    """Conv kernels (kh, kw, in, out) and dense kernels (in, out): the last two axes."""
    x = jnp.asarray(leaf)
    if x.ndim >= 2 and in_idx is not None:
        x = jnp.take(x, in_idx, axis=x.ndim - 2)
    return x if out_idx is None else jnp.take(x, out_idx, axis=x.ndim - 1)


def build_compact(model: nn.Module, variables, layout: selectors_lib.TicketLayout,
                  keep_flat, *, min_channels: int = 1, channel_multiple: int = 1):
    """Builds the narrower model holding only the ticket's channels, and its weights.

    Args:
      model: the dense model (one of the four supported CNNs).
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
    _check_variables(model, variables)
    bn, kept, floored, rule = _decide(model, layout, keep_flat, variables,
                                      (min_channels, channel_multiple))
    channels = tuple(int(kept[p].size) for p, _ in bn)
    compact_model = model.clone(channels=channels)
    slices = _family(model)[0](model, kept, dict(bn))
    slices.update({p: (None, kept[p]) for p, _ in bn})

    def visit(key_path, leaf):
        module = "/".join(selectors_lib.path_str(key_path).split("/")[1:-1])
        if module not in slices:
            raise ValueError(f"no channel rule for {type(model).__name__}'s {module!r}")
        return _slice_leaf(leaf, *slices[module])

    compact = jax.tree_util.tree_map_with_path(visit, variables)
    _check_variables(compact_model, compact)
    info = {"channels": channels, "channels_dense": tuple(n for _, n in bn),
            "kept": tuple(kept[p] for p, _ in bn), "bn_paths": tuple(p for p, _ in bn),
            "floored": tuple(floored), "shortcut_rule": rule,
            "bn_channels": (sum(channels), sum(n for _, n in bn)),
            "params_dense": count_params(variables),
            "params_compact": count_params(compact)}
    return compact_model, compact, info


def count_params(variables) -> int:
    """Number of trainable parameters (the 'params' collection; no BN statistics).

    Args:
      variables: ``{'params': ..., ...}`` or a bare params tree.

    Returns:
      The total number of entries.
    """
    tree = variables["params"] if "params" in variables else variables
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def forward_flops(model: nn.Module, variables, input_shape: Sequence[int]) -> float:
    """Eval-forward FLOPs per example from XLA's cost analysis; training costs ~3x.

    Args:
      model: the model.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
      input_shape: the batch shape (B, H, W, C) compiled for; the count is divided by B.

    Returns:
      FLOPs per example, or nan where the backend reports none.
    """
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
        variables, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: a list
    return float((cost or {}).get("flops", float("nan"))) / input_shape[0]


def _taps(size: int, kernel: int, stride: int, pad: int, out: int) -> int:
    """(output position, kernel tap) pairs that read the input, not the zero padding."""
    return sum(0 <= o * stride - pad + t < size
               for o in range(out) for t in range(kernel))


def conv_dense_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Analytic multiply-accumulates per example of the Conv and Dense layers.

    Taps on zero padding are not counted (nor does XLA; on a CIFAR VGG's 2x2 maps most
    taps are), nor are BN, pooling and biases: ``2 * macs`` is a bit below XLA's FLOPs.

    Args:
      model: the model.
      input_shape: the input batch shape (B, H, W, C); nothing is computed.

    Returns:
      MACs for one example.
    """
    macs = []

    def count(next_fun, args, kwargs, context):
        out, module = next_fun(*args, **kwargs), context.module
        if context.method_name != "__call__":
            return out
        fan = args[0].shape[-1] * out.shape[-1]
        if isinstance(module, nn.Conv):  # the four CNNs pad explicitly
            strides = np.broadcast_to(module.strides or 1, len(module.kernel_size))
            macs.append(fan * math.prod(
                _taps(n, k, s, p[0], o) for n, k, s, p, o in zip(
                    args[0].shape[1:-1], module.kernel_size, strides, module.padding,
                    out.shape[1:-1])))
        elif isinstance(module, nn.Dense):
            macs.append(fan)
        return out

    def run():
        with nn.intercept_methods(count):
            return model.init(jax.random.PRNGKey(0),
                              jnp.zeros(tuple(input_shape), jnp.float32), train=False)

    jax.eval_shape(run)
    return int(sum(macs))


def _architecture(model) -> dict:
    """The constructor arguments that rebuild ``model``, as JSON values."""
    config = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    config["dtype"] = jnp.dtype(model.dtype).name
    # Explicit counts, so reloading never depends on the width rounding.
    config["channels"] = [n for _, n in common.bn_layout(model)]
    return config


def save_compact(path: str | os.PathLike, model: nn.Module, variables,
                 extra_meta: dict | None = None, *, overwrite: bool = False) -> str:
    """Saves a compact model so that ``load_compact`` rebuilds it alone.

    Orbax writes to a temporary folder renamed once committed: a reader never sees a
    half-written checkpoint.

    Args:
      path: the checkpoint folder to create.
      model: the (compact) model, one of the four supported CNNs.
      variables: its variables.
      extra_meta: JSON-able run information stored next to the architecture.
      overwrite: replace an existing folder (otherwise orbax refuses).

    Returns:
      The absolute checkpoint path.
    """
    _check_variables(model, variables)
    meta = {"format": _FORMAT, "architecture": type(model).__name__,
            "config": _architecture(model), "num_params": count_params(variables),
            "extra": json.loads(report.to_json(extra_meta or {}))}
    path = os.path.abspath(os.fspath(path))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(path, args=ocp.args.Composite(
            state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)),
            force=overwrite)
    return path


def read_compact_meta(path: str | os.PathLike) -> dict:
    """The metadata ``save_compact`` stored: format, architecture, config, extra."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no compact checkpoint at {path}")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        meta = checkpointer.restore(path, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a wormjax compact checkpoint ({_FORMAT})")
    if meta["architecture"] not in _CLASSES:
        raise ValueError(f"unknown architecture {meta['architecture']!r} in {path}; "
                         f"known: {', '.join(_CLASSES)}")
    return meta


def load_compact(path: str | os.PathLike):
    """Rebuilds a saved compact model and its variables, without the dense model.

    Args:
      path: a folder written by ``save_compact``.

    Returns:
      ``(model, variables)``.
    """
    meta = read_compact_meta(path)
    config = dict(meta["config"], dtype=getattr(jnp, meta["config"]["dtype"]))
    model = _CLASSES[meta["architecture"]](**config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        common.abstract_variables(model))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        variables = checkpointer.restore(
            os.path.abspath(os.fspath(path)),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    return model, variables


def _narrower(model, shapes: dict):
    """The library CNN with each BatchNorm's compact channel count (``channels``)."""
    return model.clone(channels=tuple(
        int(shapes[f"params/{common.path_str(p)}/scale"][0])
        for p, _ in common.bn_layout(model)))


# wormjax.compact builds these as real narrower modules, not as a sliced jaxpr.
for _cls in _FAMILIES:
    surgery.register_narrower(_cls, _narrower)
