"""A model's variables as one flat list, whatever Flax API produced them.

Selectors and layouts read parameter trees in four shapes, and must name a
leaf the same way in all of them, or a layout built from one would not find
its leaves in another:

- a linen params dict, or a gradient/update tree shaped like it;
- a linen variables dict ``{"params": ..., "batch_stats": ..., ...}``;
- an ``nnx.State`` or ``nnx.Module``, whose leaves are ``nnx.Variable`` s
  (``jax.tree_util`` paths end in ``.value``);
- the pure trees ``nnx.Optimizer.update`` hands to optax (no ``.value``).

The canonical path of a leaf is its path inside its module tree: the
``params`` / ``batch_stats`` collection key of a linen variables dict and an
nnx Variable's ``.value`` are dropped, so ``params/block/bn/scale``, ``block/bn/scale`` and
``block.bn.scale.value`` are all ``block/bn/scale``.
"""

from __future__ import annotations

import collections.abc
import re
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

try:  # nnx is part of every flax this package supports; guard old installs.
    from flax import nnx as _nnx
except ImportError:  # pragma: no cover
    _nnx = None

__all__ = [
    "PARAM",
    "STAT",
    "OTHER",
    "FlatVariable",
    "canonical_path",
    "flat_variables",
    "param_leaves",
    "path_str",
]

PARAM, STAT, OTHER = "param", "stat", "other"
# Linen collections: "params" holds the parameters, "batch_stats" BatchNorm's
# running statistics; anything else (intermediates, cache) is neither.
_LINEN_KINDS = {"params": PARAM, "batch_stats": STAT}


class FlatVariable(NamedTuple):
    """One leaf: canonical path, what it is, and its array (or shape struct)."""

    path: str  # e.g. "layer1_0/norm_proj/scale"
    kind: str  # PARAM, STAT or OTHER
    leaf: Any


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """``('block1', 'bn', 'scale')`` or a jax key path -> ``'block1/bn/scale'``."""
    return "/".join(_key_name(k) for k in path)


def natural_key(path: str):
    """Sort key of a path string: digit runs compare as numbers ("bn2" < "bn10")."""
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)]
            for part in path.split("/")]


def _is_variable(x) -> bool:
    return _nnx is not None and isinstance(x, _nnx.Variable)


def is_linen_variables(tree) -> bool:
    """A linen variables dict: a mapping with a top-level ``params`` collection."""
    return isinstance(tree, collections.abc.Mapping) and "params" in tree


def canonical_path(keypath: Sequence[Any], linen_variables: bool = False) -> str:
    """The canonical path of one ``jax.tree_util`` key path (see the module doc).

    Args:
      keypath: the key path of a leaf.
      linen_variables: the tree is a linen variables dict, whose ``params``
        and ``batch_stats`` collection keys are dropped (a module's scale and
        its running mean then share one module path).
    """
    keys = list(keypath)
    # Only an attribute named "value" is a Variable's payload; a dict key
    # "value" (BERT's attention value projection) is a real path element.
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    if linen_variables and keys and _key_name(keys[0]) in _LINEN_KINDS:
        keys = keys[1:]
    return path_str(keys)


def _variable_kind(variable) -> str:
    if isinstance(variable, _nnx.BatchStat):
        return STAT
    if isinstance(variable, _nnx.Param):
        return PARAM
    return OTHER


def _variable_value(variable):
    get = getattr(variable, "get_value", None)  # .value is deprecated in flax 0.12
    return get() if get is not None else variable.value


def _check_leaf(path: str, leaf, tree) -> None:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct,
                         int, float, bool)):
        return
    raise ValueError(
        f"cannot read the leaf at {path or '(root)'!r} of a {type(tree).__name__}: "
        f"it is a {type(leaf).__name__}. Selectors read pytrees of arrays or "
        "shape structs: a linen params or variables dict, a gradient tree, an "
        "nnx.State (nnx.state(model)) or an nnx.Module")


def flat_variables(tree) -> list[FlatVariable]:
    """Every leaf of ``tree`` with its canonical path and kind, in natural path order.

    The order must not depend on how a dict was built: flax builds parameter
    dicts in definition order, but anything that passed through ``jit`` or
    ``jax.grad`` comes back with sorted keys, and a layout derived inside a
    jitted step must match the one derived outside. Natural order equals the
    definition order for index-named modules (``BatchNorm_0`` ... ``_10``).

    Kinds: in a linen variables dict the ``params`` collection is PARAM and
    ``batch_stats`` is STAT; an ``nnx.Param`` is PARAM and an ``nnx.BatchStat``
    STAT; a bare tree of arrays (params, gradients) is all PARAM.

    Raises:
      ValueError: a leaf is not an array, or the tree has no leaves.
    """
    linen = is_linen_variables(tree)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    out = []
    for keypath, leaf in flat:
        path = canonical_path(keypath, linen)
        if _is_variable(leaf):
            kind, leaf = _variable_kind(leaf), _variable_value(leaf)
        elif linen:
            kind = _LINEN_KINDS.get(_key_name(keypath[0]), OTHER)
        else:
            kind = PARAM
        _check_leaf(path, leaf, tree)
        out.append(FlatVariable(path, kind, leaf))
    if not out:
        raise ValueError(
            f"the {type(tree).__name__} has no array leaves; selectors read a "
            "linen params or variables dict, a gradient tree, an nnx.State or an "
            "nnx.Module")
    return sorted(out, key=lambda v: natural_key(v.path))


def param_leaves(tree) -> list[tuple[str, Any]]:
    """``(canonical path, array)`` of the parameters of ``tree``, in natural order."""
    return [(v.path, v.leaf) for v in flat_variables(tree) if v.kind == PARAM]
