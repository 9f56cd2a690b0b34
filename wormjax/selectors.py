"""Choosing the representative parameters of a model, once, by path.

A selector turns a parameter pytree into a :class:`TicketLayout`: the ordered
list of representative leaves (BatchNorm scales, attention kernels), where each
one sits in the flat ticket mask, and which other leaves share its mask (the
BatchNorm bias of a pruned channel is truncated together with its scale).
The layout is static: it depends on paths and shapes only, never on values.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LayoutEntry",
    "TicketLayout",
    "ParamSelector",
    "path_selector",
    "batchnorm_selector",
    "attention_selector",
    "path_str",
]

BATCHNORM_SCALE_PATTERN = r"(^|/)[^/]*(bn|BatchNorm)[^/]*/scale$"
QUERY_KEY_PATTERN = r"(^|/)(query|key)/kernel$"
QUERY_KEY_VALUE_PATTERN = r"(^|/)(query|key|value)/kernel$"


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """``('block1', 'bn', 'scale')`` or a jax key path -> ``'block1/bn/scale'``."""
    return "/".join(_key_name(k) for k in path)


def _natural_key(path: str):
    # "bn2" < "bn10": digit runs compare as numbers.
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)]
            for part in path.split("/")]


def leaves_with_paths(params) -> list[tuple[str, Any]]:
    """Leaves with their path strings, in natural order of the paths.

    The order must not depend on how a dict was built: flax builds parameter
    dicts in definition order, but anything that passed through ``jit`` or
    ``jax.grad`` comes back with sorted keys, and a layout derived inside a
    jitted step must match the one derived outside. Natural order equals the
    definition order for index-named modules (``BatchNorm_0`` ... ``_10``).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    pairs = [(path_str(p), leaf) for p, leaf in flat]
    return sorted(pairs, key=lambda pair: _natural_key(pair[0]))


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """One representative leaf: where it is and where its mask lives."""

    path: str  # e.g. "features_1_bn/scale"
    shape: tuple[int, ...]
    offset: int  # start of this leaf's entries in the flat mask
    companions: tuple[str, ...] = ()  # leaves truncated with the same mask

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class TicketLayout:
    """Static map between a parameter tree and its flat ticket mask."""

    entries: tuple[LayoutEntry, ...]

    @property
    def num_entries(self) -> int:
        """N: the length of the flat mask."""
        return sum(e.size for e in self.entries)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.entries)

    def representative(self, params) -> list[jax.Array]:
        """The representative leaves of ``params`` as a list in layout order.

        A list, not a dict: its leaf order is the flat mask's order.
        """
        by_path = dict(leaves_with_paths(params))
        missing = [e.path for e in self.entries if e.path not in by_path]
        if missing:
            raise ValueError(
                f"parameters lack representative leaves {missing}; the layout was "
                "built for a different model"
            )
        return [by_path[e.path] for e in self.entries]

    def split(self, flat_mask: jax.Array) -> dict[str, jax.Array]:
        """The flat mask as ``{path: mask shaped like that leaf}``."""
        if flat_mask.shape != (self.num_entries,):
            raise ValueError(
                f"flat mask has shape {flat_mask.shape}; this layout needs "
                f"({self.num_entries},)"
            )
        return {
            e.path: jnp.reshape(flat_mask[e.offset:e.offset + e.size], e.shape)
            for e in self.entries
        }

    def map_masked(self, tree, flat_mask: jax.Array, fn: Callable,
                   untouched: Callable = lambda leaf: leaf):
        """Applies ``fn(leaf, keep)`` to every representative and companion leaf.

        ``keep`` is the leaf's bool mask broadcast to the leaf's shape; every
        other leaf becomes ``untouched(leaf)`` (by default itself).
        """
        masks = self.split(flat_mask)
        target = {}
        for e in self.entries:
            target[e.path] = masks[e.path]
            for c in e.companions:
                target[c] = masks[e.path]

        def visit(path, leaf):
            keep = target.get(path_str(path))
            if keep is None:
                return untouched(leaf)
            return fn(leaf, jnp.broadcast_to(keep, jnp.shape(leaf)))

        return jax.tree_util.tree_map_with_path(visit, tree)


@dataclasses.dataclass(frozen=True)
class ParamSelector:
    """Selects representative leaves by a path regex; see :func:`path_selector`."""

    pattern: str
    companion_fn: Callable[[str], Sequence[str]] | None = None
    description: str = "parameters"

    def __call__(self, params) -> TicketLayout:
        """Builds the :class:`TicketLayout` of ``params`` (arrays or shape structs)."""
        regex = re.compile(self.pattern)
        leaves = leaves_with_paths(params)
        all_paths = {p for p, _ in leaves}
        entries, offset = [], 0
        for path, leaf in leaves:
            if not regex.search(path):
                continue
            companions = ()
            if self.companion_fn is not None:
                companions = tuple(c for c in self.companion_fn(path) if c in all_paths)
            shape = tuple(int(d) for d in np.shape(leaf))
            entries.append(LayoutEntry(path, shape, offset, companions))
            offset += entries[-1].size
        if not entries:
            available = "\n  ".join(p for p, _ in leaves) or "(none)"
            raise ValueError(
                f"no {self.description} match the pattern {self.pattern!r}. "
                f"Available parameter paths:\n  {available}"
            )
        return TicketLayout(tuple(entries))


def path_selector(
    pattern: str,
    companion_fn: Callable[[str], Sequence[str]] | None = None,
    description: str = "parameters",
) -> ParamSelector:
    """Representative leaves = every leaf whose ``a/b/c`` path matches ``pattern``.

    Args:
      pattern: a regular expression searched in each leaf's path string.
      companion_fn: maps a selected path to paths that share its mask (their
        gradients are truncated with it); paths that do not exist are skipped.
      description: what the pattern is meant to select, for error messages.

    Returns:
      A callable ``params -> TicketLayout``.
    """
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid selector pattern {pattern!r}: {err}") from None
    return ParamSelector(pattern, companion_fn, description)


def _bn_bias(path: str) -> tuple[str, ...]:
    return (path[: -len("scale")] + "bias",)


def batchnorm_selector(
    pattern: str = BATCHNORM_SCALE_PATTERN, include_bias: bool = True
) -> ParamSelector:
    """The CNN representative: every BatchNorm scale (one entry per channel).

    Args:
      pattern: regex for the scale paths; the default matches flax's
        ``BatchNorm_<i>/scale`` and any module whose name contains ``bn``.
      include_bias: truncate each pruned channel's BatchNorm bias (beta) with
        its scale, as docs/algorithm.md section 3 specifies.
    """
    return path_selector(
        pattern, _bn_bias if include_bias else None, "BatchNorm scales"
    )


def attention_selector(include_value: bool = False, pattern: str | None = None
                       ) -> ParamSelector:
    """The transformer representative: query and key (optionally value) kernels.

    One entry per kernel element; biases are not part of the ticket.
    """
    if pattern is None:
        pattern = QUERY_KEY_VALUE_PATTERN if include_value else QUERY_KEY_PATTERN
    return path_selector(pattern, None, "attention query/key kernels")
