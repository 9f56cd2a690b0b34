"""The ticket layout: where each representative leaf sits in the flat mask.

A :class:`TicketLayout` is the static map a selector builds from a parameter
tree: the ordered representative leaves (BatchNorm scales, attention kernels),
each one's offset in the flat ticket mask, and the companion leaves that share
its mask (the BatchNorm bias of a pruned channel is truncated with its scale).
It depends on paths and shapes only, never on values, and reads every tree by
canonical path (``wormjax.variables``): linen params or variables, an
``nnx.State``, the pure gradient trees inside ``nnx.Optimizer.update``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wormjax import variables as variables_lib
from wormjax.variables import path_str

__all__ = ["LayoutEntry", "TicketLayout", "build_layout", "leaves_with_paths"]


def leaves_with_paths(params) -> list[tuple[str, Any]]:
    """Leaves with their raw path strings, in natural order of the paths.

    The order must not depend on how a dict was built (see
    ``variables.flat_variables``). Unlike layouts, this keeps every leaf and
    its full path (``params/...``, ``.../value``) as ``jax.tree_util`` names it.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    pairs = [(path_str(p), leaf) for p, leaf in flat]
    return sorted(pairs, key=lambda pair: variables_lib.natural_key(pair[0]))


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
        by_path = dict(variables_lib.param_leaves(params))
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
        other leaf becomes ``untouched(leaf)`` (by default itself). ``tree`` is
        any tree the layout reads (canonical paths); its structure is kept.
        """
        masks = self.split(flat_mask)
        target = {}
        for e in self.entries:
            target[e.path] = masks[e.path]
            for c in e.companions:
                target[c] = masks[e.path]

        linen = variables_lib.is_linen_variables(tree)

        def visit(path, leaf):
            keep = target.get(variables_lib.canonical_path(path, linen))
            if keep is None:
                return untouched(leaf)
            return fn(leaf, jnp.broadcast_to(keep, jnp.shape(leaf)))

        return jax.tree_util.tree_map_with_path(visit, tree)


def build_layout(leaves: list[tuple[str, Any]], selected: Callable[[str], bool],
                 companion_fn: Callable[[str], Sequence[str]] | None) -> TicketLayout:
    """The layout of the ``selected`` paths among ``leaves`` (natural order)."""
    all_paths = {p for p, _ in leaves}
    entries, offset = [], 0
    for path, leaf in leaves:
        if not selected(path):
            continue
        companions = ()
        if companion_fn is not None:
            companions = tuple(c for c in companion_fn(path) if c in all_paths)
        shape = tuple(int(d) for d in np.shape(leaf))
        entries.append(LayoutEntry(path, shape, offset, companions))
        offset += entries[-1].size
    return TicketLayout(tuple(entries))
