"""Channel ids, the union-find that couples them, and each key's labelled axes.

Every channel of every variable leaf gets an id; ops tie ids together, and ids tied
together form a *component*: channels that must be kept or removed together. An axis
carries a tuple of *factors*, one id array each; a position lives iff every factor's
component lives. The model input's positions belong to ``KEEP``, the component that
is never removed.
"""

from __future__ import annotations

import bisect

import numpy as np

from wormjax.surgery.trace import Graph
from wormjax.surgery.trace import Lit

__all__ = ["KEEP", "Labels", "describe"]

KEEP = 0  # the component of positions that can never be removed (the model input)


class _Ids:
    """Union-find over channel ids; id 0 is ``KEEP``."""

    def __init__(self):
        self.parent = [0]
        self.touched = [True]  # whether an id was ever unioned with another

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.touched.extend([False] * n)
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(i)) for i in ids.ravel()), np.int64,
                           ids.size).reshape(ids.shape)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for i, j in zip(a.ravel().tolist(), b.ravel().tolist()):
            ri, rj = self.find(i), self.find(j)
            self.touched[i] = self.touched[j] = True
            if ri != rj:  # KEEP (0) stays the root of whatever joins it
                self.parent[max(ri, rj)] = min(ri, rj)


def _canonical(ids: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


class Labels:
    """Per key, ``{axis: (factor ids, ...)}``; plus the facts the rules need."""

    def __init__(self, graph: Graph):
        self.graph, self.ids = graph, _Ids()
        self.axes: dict[int, dict[int, tuple]] = {}  # raw: aliases not expanded
        # Fresh id blocks of kernels and constants (start -> size), and those that
        # became aliases (start -> factors): see ``tie``.
        self.blocks: dict[int, int] = {}
        self.aliases: dict[int, tuple] = {}
        self.pinned: list[tuple[tuple, str]] = []  # (factors, why they must stay)
        self.consumers: list[tuple] = []  # (eqn, lhs key, lhs axis, rhs key, rhs axis)
        self._starts: list[int] = []

    def get(self, key, axis):
        if isinstance(key, Lit):
            return None
        return self.expand(self.axes.get(key, {}).get(axis))

    def of(self, key) -> dict:
        if isinstance(key, Lit):
            return {}
        return {a: self.expand(f) for a, f in self.axes.get(key, {}).items()}

    def expand(self, factors):
        """``factors`` with every aliased block replaced by the factors it stands for."""
        if factors is None or not self.aliases:
            return factors
        out = []
        for f in factors:
            start = int(f.flat[0]) if f.size else -1
            target = self.aliases.get(self._block_of(start))
            if target is None:
                out.append(f)
            else:
                offset = self._block_of(start)
                out.extend(t[f - offset] for t in target)
        return tuple(out)

    def _block_of(self, i: int):
        starts = self._starts
        j = bisect.bisect_right(starts, i) - 1
        return starts[j] if j >= 0 and i < starts[j] + self.blocks[starts[j]] else None

    def add_block(self, ids: np.ndarray) -> None:
        self.blocks[int(ids[0])] = ids.size
        self._starts = sorted(self.blocks)

    def _aliasable(self, factors) -> bool:
        """One untouched fresh block, in order: a kernel axis no op has tied yet."""
        if len(factors) != 1:
            return False
        f = factors[0]
        start = int(f.flat[0]) if f.size else -1
        return (self.blocks.get(start) == f.size
                and np.array_equal(f, np.arange(start, start + f.size))
                and not any(self.ids.touched[start:start + f.size]))

    def roots(self, factors) -> tuple:
        return tuple(self.ids.roots(f) for f in factors)

    def tie(self, a, b):
        """Ties two labellings of one axis position-wise; returns the merged one.

        A position of a several-factor labelling lives iff every factor does, which a
        union cannot say: tying a flattened (pixel, pixel, channel) axis factor by
        factor to a dense kernel's fresh rows would join the pixel ids, the channel
        ids and the rows into one component. A fresh kernel (or constant) axis tied
        to several factors therefore becomes an *alias* of them instead.
        """
        if a is None or b is None:
            return a if b is None else b
        for one, many in ((a, b), (b, a)):
            if len(many) > 1 and self._aliasable(one):
                self.aliases[int(one[0].flat[0])] = tuple(many)
                return tuple(many)
        used = set()
        for fa in a:
            for j, fb in enumerate(b):
                ra, rb = self.ids.roots(fa), self.ids.roots(fb)
                if (np.array_equal(_canonical(ra), _canonical(rb))
                        or len(np.unique(ra)) == ra.size
                        or len(np.unique(rb)) == rb.size):
                    self.ids.union(fa, fb)
                    used.add(j)
        return tuple(a) + tuple(fb for j, fb in enumerate(b) if j not in used)

    def pin(self, factors, why: str):
        if factors is not None:
            self.pinned.append((tuple(factors), why))


def describe(lab, factors, limit: int = 3) -> str:
    """Names the variable leaves whose channels ``factors`` carry."""
    roots = set()
    for f in factors:
        roots.update(np.unique(lab.ids.roots(f)).tolist())
    names = [path for path, key in zip(lab.graph.leaf_paths, lab.graph.leaf_keys)
             if any(set(np.unique(lab.roots(fs)[0]).tolist()) & roots
                    for fs in lab.of(key).values())]
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "") or "?"
