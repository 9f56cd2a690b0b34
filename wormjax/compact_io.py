"""Saving and reloading compact networks: the library CNNs alone, any other with its
dense model.

Two formats, both an orbax checkpoint of the variables next to a JSON record:

- ``wormjax.compact_cnn/1``: a narrower library CNN (VGG, ResNet). The record holds
  the class and the constructor arguments, explicit ``channels`` included, so
  ``load_compact(path)`` rebuilds it without the dense model.
- ``wormjax.compact/1``: a ``wormjax.compact`` network of any other model. A Python
  class cannot be rebuilt from JSON, so the record holds the channels plan (the kept
  positions of every variable leaf); ``load_compact(path, model, example_input)``
  rebuilds the ``Compact`` from the dense model, the plan and the sliced variables,
  without the dense weights.

Orbax writes to a temporary folder renamed once committed: a reader never sees a
half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from wormjax import _json as _json_lib
from wormjax import surgery
from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg
from wormjax.surgery.accounting import count_params
from wormjax.variables import path_str

__all__ = ["LIBRARY_CNNS", "check_variables", "save_compact", "load_compact",
           "read_compact_meta"]

_FORMAT = "wormjax.compact_cnn/1"
_GENERIC_FORMAT = "wormjax.compact/1"

# Exact classes: a subclass may wire its layers differently from its constructor.
LIBRARY_CNNS = {cls.__name__: cls for cls in (
    vgg.CifarVGG11, vgg.CifarVGG16, vgg.TorchvisionVGG11BN, resnet.CifarResNet18,
    resnet.TorchvisionResNet18)}


def check_variables(model, variables) -> None:
    """Raises unless ``variables`` has exactly the library CNN ``model``'s tree."""
    want = jax.tree_util.tree_map(lambda s: s.shape, common.abstract_variables(model))
    if want != jax.tree_util.tree_map(np.shape, variables):
        raise ValueError(
            f"variables do not match {type(model).__name__}(width={model.width}, "
            f"channels={model.channels}): different parameter tree or shapes")


def _json(payload: Any) -> Any:
    """``payload`` as plain JSON values (numpy and jax scalars and arrays converted)."""
    try:
        return json.loads(json.dumps(payload, default=_json_lib.default))
    except TypeError as err:
        raise TypeError(f"{err} (in extra_meta)") from None


def _architecture(model) -> dict:
    """The constructor arguments that rebuild ``model``, as JSON values."""
    config = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    config["dtype"] = jnp.dtype(model.dtype).name
    # Explicit counts, so reloading never depends on the width rounding.
    config["channels"] = [n for _, n in common.bn_layout(model)]
    return config


def _encode_plan(plan) -> dict:
    bits = lambda m: "".join("1" if b else "0" for b in np.asarray(m, bool))
    return {"leaf_keep": {p: {str(a): bits(m) for a, m in axes.items()}
                          for p, axes in plan.leaf_keep.items()},
            "floored": list(plan.floored), "pinned": [list(p) for p in plan.pinned],
            "groups": [list(g) for g in plan.groups]}


def _decode_plan(record: dict) -> surgery.Plan:
    unbits = lambda s: np.frombuffer(s.encode(), np.uint8) == ord("1")
    return surgery.Plan(
        {p: {int(a): unbits(m) for a, m in axes.items()}
         for p, axes in record["leaf_keep"].items()},
        tuple(record["floored"]), tuple(tuple(p) for p in record["pinned"]),
        tuple(tuple(g) for g in record["groups"]))


def save_compact(path: str | os.PathLike, model, variables=None,
                 extra_meta: dict | None = None, *, overwrite: bool = False) -> str:
    """Saves a compact network so that ``load_compact`` rebuilds it.

    Args:
      path: the checkpoint folder to create.
      model: a narrower library CNN (with ``variables``), or a ``wormjax.compact``
        result (its own variables unless ``variables`` is given, e.g. retrained).
      variables: the compact variables.
      extra_meta: JSON-able run information stored next to the architecture.
      overwrite: replace an existing folder (otherwise orbax refuses).

    Returns:
      The absolute checkpoint path.
    """
    extra = _json(extra_meta or {})
    if isinstance(model, surgery.Compact):
        small, variables = model, model.variables if variables is None else variables
        model = small.module
        if model is None or type(model) not in LIBRARY_CNNS.values():
            meta = {"format": _GENERIC_FORMAT, "architecture": type(small.model).__name__,
                    "plan": _encode_plan(small.plan),
                    "num_params": count_params(variables), "extra": extra}
            return _write(path, variables, meta, overwrite)
    if type(model) not in LIBRARY_CNNS.values():
        raise ValueError(f"save_compact saves {', '.join(LIBRARY_CNNS)} or a "
                         f"wormjax.compact result; got {type(model).__name__}")
    check_variables(model, variables)
    meta = {"format": _FORMAT, "architecture": type(model).__name__,
            "config": _architecture(model), "num_params": count_params(variables),
            "extra": extra}
    return _write(path, variables, meta, overwrite)


def _write(path, variables, meta, overwrite) -> str:
    path = os.path.abspath(os.fspath(path))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(path, args=ocp.args.Composite(
            state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)),
            force=overwrite)
    return path


def read_compact_meta(path: str | os.PathLike) -> dict:
    """The record ``save_compact`` stored: format, architecture, config or plan, extra."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no compact checkpoint at {path}")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        meta = checkpointer.restore(path, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
    if not isinstance(meta, dict) or meta.get("format") not in (_FORMAT, _GENERIC_FORMAT):
        raise ValueError(f"{path} is not a wormjax compact checkpoint ({_FORMAT} or "
                         f"{_GENERIC_FORMAT})")
    if meta["format"] == _FORMAT and meta["architecture"] not in LIBRARY_CNNS:
        raise ValueError(f"unknown architecture {meta['architecture']!r} in {path}; "
                         f"known: {', '.join(LIBRARY_CNNS)}")
    return meta


def _restore(path, abstract):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        return checkpointer.restore(
            os.path.abspath(os.fspath(path)),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state


def load_compact(path: str | os.PathLike, model=None, *example_inputs):
    """Rebuilds a saved compact network, without the dense weights.

    Args:
      path: a folder written by ``save_compact``.
      model: for a ``wormjax.compact/1`` checkpoint, the dense model (the same
        architecture, any weights); unused for a library CNN.
      *example_inputs: for ``wormjax.compact/1``, an input batch (arrays or
        ShapeDtypeStructs) that the dense model's init accepts.

    Returns:
      ``(model, variables)`` for a library CNN; a ``Compact`` otherwise.
    """
    meta = read_compact_meta(path)
    if meta["format"] == _FORMAT:
        config = dict(meta["config"], dtype=getattr(jnp, meta["config"]["dtype"]))
        model = LIBRARY_CNNS[meta["architecture"]](**config)
        return model, _restore(path, common.abstract_variables(model))
    if model is None or not example_inputs:
        raise ValueError(f"{path} holds a compact {meta['architecture']}: pass the dense "
                         f"model and an example input, load_compact(path, model, x)")
    if type(model).__name__ != meta["architecture"]:
        raise ValueError(f"{path} holds a compact {meta['architecture']}, not a "
                         f"{type(model).__name__}")
    plan = _decode_plan(meta["plan"])
    kwargs = surgery.eval_kwargs(model)
    dense = jax.eval_shape(lambda *x: model.init(jax.random.PRNGKey(0), *x, **kwargs),
                           *example_inputs)

    def narrow(key_path, leaf):
        shape = list(leaf.shape)
        for axis, mask in plan.leaf_keep[path_str(key_path)].items():
            shape[axis] = int(mask.sum())
        return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype)

    variables = _restore(path, jax.tree_util.tree_map_with_path(narrow, dense))
    return surgery.from_plan(model, variables, plan, *example_inputs, sliced=True)
