"""The channel-dependency graph of a traced forward pass.

``trace`` turns ``model.apply`` into a flat list of primitive equations (``jit``,
``custom_jvp``/``custom_vjp`` and ``checkpoint`` bodies inlined). ``propagate`` then
gives every channel of every variable leaf (params, BatchNorm statistics, constants) an
id and follows those ids through the ops: a conv or dense layer ties its input features
to the kernel's input axis and labels its output with the kernel's output axis, an
elementwise op (BatchNorm arithmetic, a residual add) ties its operands position by
position, a flatten into a dense layer maps one channel to a strided set of rows. Ids
tied together form a *component*: channels that must be kept or removed together.

An axis carries a tuple of *factors*, one id array each; a position lives iff every
factor's component lives. One factor is the rule; several arise where a reshape merges
labelled axes (a conv kernel reshaped for a matmul: kh x kw x in). The model input's
positions belong to ``KEEP``, the component that is never removed.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.extend as jex
import numpy as np

__all__ = ["KEEP", "FlatEqn", "Graph", "Lit", "Labels", "UnsupportedOpError",
           "trace", "propagate"]

KEEP = 0  # the component of positions that can never be removed (the model input)


class UnsupportedOpError(ValueError):
    """An op the tracer cannot map channels through touches a channel axis."""


class Lit(NamedTuple):
    """A literal operand."""

    value: Any


class FlatEqn(NamedTuple):
    """One primitive application; ``ins``/``outs`` are int keys (or ``Lit``)."""

    prim: Any
    params: dict
    ins: tuple
    outs: tuple
    where: str  # flax module path (name stack), for error messages


class Graph(NamedTuple):
    """A flat forward pass: leaves are the variables' and constants' keys."""

    eqns: list
    avals: dict  # key -> ShapedArray
    leaf_keys: list  # one per variables leaf, in tree_flatten order
    leaf_paths: list  # 'params/conv0/kernel', ...
    input_keys: list  # the non-variable arguments (images, ...)
    const_keys: list
    consts: list
    outs: list  # keys or Lit
    out_tree: Any


_SUB_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _sub_jaxpr(eqn):
    for name in _SUB_JAXPR_PARAMS:
        sub = eqn.params.get(name)
        if isinstance(sub, jex.core.ClosedJaxpr):
            return sub.jaxpr, list(sub.consts)
        if isinstance(sub, jex.core.Jaxpr):
            return sub, []
    return None


def trace(fn, variables, *inputs) -> Graph:
    """Traces ``fn(variables, *inputs)`` (arrays or ShapeDtypeStructs) to a Graph."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(variables, *inputs)
    avals, eqns, consts, const_keys = {}, [], [], []
    counter = iter(range(1, 1 << 62))

    def new(aval):
        key = next(counter)
        avals[key] = aval
        return key

    def add_consts(values):
        keys = []
        for value in values:
            keys.append(new(jax.typeof(value)))
            consts.append(value)
        const_keys.extend(keys)
        return keys

    def inline(jaxpr, const_keys, in_keys, where):
        env = dict(zip(jaxpr.constvars, const_keys))
        env.update(zip(jaxpr.invars, in_keys))

        def read(atom):
            return Lit(atom.val) if isinstance(atom, jex.core.Literal) else env[atom]

        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            here = str(eqn.source_info.name_stack) or where
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                body, body_consts = sub
                outs = inline(body, add_consts(body_consts), ins, here)
            else:
                outs = [new(v.aval) for v in eqn.outvars]
                eqns.append(FlatEqn(eqn.primitive, dict(eqn.params), tuple(ins),
                                    tuple(outs), here))
            env.update((v, k) for v, k in zip(eqn.outvars, outs)
                       if not isinstance(v, jex.core.DropVar))
        return [read(a) for a in jaxpr.outvars]

    jaxpr = closed.jaxpr
    top_consts = add_consts(closed.consts)
    in_keys = [new(v.aval) for v in jaxpr.invars]
    outs = inline(jaxpr, top_consts, in_keys, "")
    flat, _ = jax.tree_util.tree_flatten_with_path(variables)
    n = len(flat)
    paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
             for p, _ in flat]
    return Graph(eqns, avals, in_keys[:n], paths, in_keys[n:], const_keys, consts,
                 outs, jax.tree_util.tree_structure(out_shape))


class _Ids:
    """Union-find over channel ids; id 0 is ``KEEP``."""

    def __init__(self):
        self.parent = [0]

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
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
            if ri != rj:  # KEEP (0) stays the root of whatever joins it
                self.parent[max(ri, rj)] = min(ri, rj)


def _canonical(ids: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


class Labels:
    """Per key, ``{axis: (factor ids, ...)}``; plus the facts the rules need."""

    def __init__(self, graph: Graph):
        self.graph, self.ids = graph, _Ids()
        self.axes: dict[int, dict[int, tuple]] = {}
        self.pinned: list[tuple[tuple, str]] = []  # (factors, why they must stay)
        self.consumers: list[tuple] = []  # (eqn, lhs key, lhs axis, rhs key, rhs axis)

    def get(self, key, axis):
        if isinstance(key, Lit):
            return None
        return self.axes.get(key, {}).get(axis)

    def of(self, key) -> dict:
        return {} if isinstance(key, Lit) else self.axes.get(key, {})

    def roots(self, factors) -> tuple:
        return tuple(self.ids.roots(f) for f in factors)

    def tie(self, a, b):
        """Ties two labellings of one axis position-wise; returns the merged one."""
        if a is None or b is None:
            return a if b is None else b
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


def _shape(graph, key):
    return tuple(np.shape(key.value)) if isinstance(key, Lit) else graph.avals[key].shape


def _touches(labels, key) -> bool:
    """Whether ``key`` carries any removable channel (not only KEEP)."""
    return any(np.any(labels.ids.roots(f) != KEEP)
               for factors in labels.of(key).values() for f in factors)


def _reshape_groups(old, new):
    """Contiguous (old axes, new axes) groups of equal size, size-1 axes skipped."""
    i, j, groups = 0, 0, []
    while i < len(old) or j < len(new):
        if i < len(old) and old[i] == 1:
            i += 1
            continue
        if j < len(new) and new[j] == 1:
            j += 1
            continue
        gi, gj, pi, pj = [i], [j], old[i], new[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(i)
                pi, i = pi * old[i], i + 1
            else:
                gj.append(j)
                pj, j = pj * new[j], j + 1
        groups.append((gi, gj))
    return groups


ELEMENTWISE = frozenset("""add sub mul div max min pow atan2 rem and or xor ne eq lt le
gt ge select_n nextafter add_any clamp neg exp exp2 log log1p expm1 tanh logistic abs
sign sqrt rsqrt cbrt integer_pow square convert_element_type erf erfc erf_inv sin cos
tan floor ceil round is_finite not copy copy_p real imag reduce_precision
stop_gradient""".split())
_REDUCE = frozenset("""reduce_sum reduce_max reduce_min reduce_prod reduce_and
reduce_or reduce_xor argmax argmin""".split())
_WINDOW = frozenset("reduce_window_sum reduce_window_max reduce_window_min".split())
_PASS = frozenset(["sharding_constraint", "optimization_barrier"])


def _elementwise(lab, eqn, shape):
    out = {}
    for key in eqn.ins:
        if len(_shape(lab.graph, key)) != len(shape):
            continue  # a scalar operand; size-1 axes broadcast and carry no labels
        for axis, factors in lab.of(key).items():
            out[axis] = lab.tie(out.get(axis), factors)
    return out


def _conv(lab, eqn):
    lhs, rhs = eqn.ins
    dn, groups = eqn.params["dimension_numbers"], eqn.params["feature_group_count"]
    if eqn.params["batch_group_count"] != 1 and _touches(lab, lhs):
        raise UnsupportedOpError(f"conv_general_dilated with batch_group_count at "
                                 f"{eqn.where or 'top level'}")
    lhs_f, rhs_in, rhs_out = dn.lhs_spec[1], dn.rhs_spec[1], dn.rhs_spec[0]
    inputs, kernel_out = lab.get(lhs, lhs_f), lab.get(rhs, rhs_out)
    if groups == 1:
        lab.tie(inputs, lab.get(rhs, rhs_in))
        lab.consumers.append((eqn, lhs, lhs_f, rhs, rhs_in))
    else:
        # A grouped conv keeps or removes whole groups: group g reads inputs
        # [g*k, (g+1)*k) and writes outputs [g*m, (g+1)*m).
        k = _shape(lab.graph, rhs)[rhs_in]
        m = _shape(lab.graph, rhs)[rhs_out] // groups
        group = lab.ids.fresh(groups)
        lab.tie(inputs, (np.repeat(group, k),))
        kernel_out = lab.tie(kernel_out, (np.repeat(group, m),))
    out = {dn.out_spec[1]: kernel_out} if kernel_out is not None else {}
    batch = lab.get(lhs, dn.lhs_spec[0])
    if batch is not None:
        out[dn.out_spec[0]] = batch
    return out


def _dot(lab, eqn):
    lhs, rhs = eqn.ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    for a, b in zip(lc, rc):
        lab.tie(lab.get(lhs, a), lab.get(rhs, b))
        lab.consumers.append((eqn, lhs, a, rhs, b))
    batch = [lab.tie(lab.get(lhs, a), lab.get(rhs, b)) for a, b in zip(lb, rb)]
    free_l = [a for a in range(len(_shape(lab.graph, lhs))) if a not in lc + lb]
    free_r = [b for b in range(len(_shape(lab.graph, rhs))) if b not in rc + rb]
    got = batch + [lab.get(lhs, a) for a in free_l] + [lab.get(rhs, b) for b in free_r]
    return {axis: f for axis, f in enumerate(got) if f is not None}


def _reshape(lab, eqn, key, new):
    old, out = _shape(lab.graph, key), {}
    for old_axes, new_axes in _reshape_groups(old, new):
        labelled = [a for a in old_axes if lab.get(key, a) is not None]
        if not labelled:
            continue
        if len(new_axes) > 1:
            if len(old_axes) == 1:
                raise UnsupportedOpError(
                    f"reshape splits a channel axis {old} -> {new} (channel shuffle or "
                    f"grouping) at {eqn.where or 'top level'}")
            raise UnsupportedOpError(f"reshape {old} -> {new} regroups a channel axis "
                                     f"at {eqn.where or 'top level'}")
        sizes = [old[a] for a in old_axes]
        factors = []
        for a in labelled:
            view = [1] * len(sizes)
            view[old_axes.index(a)] = old[a]
            factors += [np.broadcast_to(f.reshape(view), sizes).ravel()
                        for f in lab.get(key, a)]
        out[new_axes[0]] = tuple(factors)
    return out


def _concatenate(lab, eqn, shape):
    axis = eqn.params["dimension"]
    out = {a: f for a, f in _elementwise_except(lab, eqn, shape, axis).items()}
    parts = [lab.get(k, axis) for k in eqn.ins]
    if all(p is None for p in parts):
        return out
    width = max(len(p) for p in parts if p is not None)
    rows = []
    for key, part in zip(eqn.ins, parts):
        n = _shape(lab.graph, key)[axis]
        part = tuple(part or ()) + (np.full(n, KEEP),) * (width - len(part or ()))
        rows.append(part)
    out[axis] = tuple(np.concatenate([r[i] for r in rows]) for i in range(width))
    return out


def _elementwise_except(lab, eqn, shape, skip):
    out = {}
    for key in eqn.ins:
        for axis, factors in lab.of(key).items():
            if axis != skip:
                out[axis] = lab.tie(out.get(axis), factors)
    return out


def _rule(lab, eqn):
    """The output labels of one equation (a list, one dict per output)."""
    name, params, graph = eqn.prim.name, eqn.params, lab.graph
    shape = graph.avals[eqn.outs[0]].shape if eqn.outs else ()
    key = eqn.ins[0] if eqn.ins else None
    where = eqn.where or "top level"
    if name in ELEMENTWISE or name in _PASS:
        out = _elementwise(lab, eqn, shape)
        return [out] * len(eqn.outs)
    if name == "broadcast_in_dim":
        old = _shape(graph, key)
        return [{d: lab.get(key, i) for i, d in enumerate(params["broadcast_dimensions"])
                 if old[i] == shape[d] and lab.get(key, i) is not None}]
    if name == "reshape":
        return [_reshape(lab, eqn, key, shape)]
    if name == "squeeze":
        kept = [a for a in range(len(_shape(graph, key))) if a not in params["dimensions"]]
        return [{i: lab.get(key, a) for i, a in enumerate(kept)
                 if lab.get(key, a) is not None}]
    if name == "transpose":
        return [{i: lab.get(key, a) for i, a in enumerate(params["permutation"])
                 if lab.get(key, a) is not None}]
    if name == "conv_general_dilated":
        return [_conv(lab, eqn)]
    if name == "dot_general":
        return [_dot(lab, eqn)]
    if name in _REDUCE:
        axes = params["axes"]
        for a in axes:
            lab.pin(lab.get(key, a), f"{name} over a channel axis at {where}")
        kept = [a for a in range(len(_shape(graph, key))) if a not in axes]
        return [{i: lab.get(key, a) for i, a in enumerate(kept)
                 if lab.get(key, a) is not None}]
    if name in _WINDOW:
        for a, factors in lab.of(key).items():
            if factors is not None and (params["window_dimensions"][a] != 1
                                        or params["window_strides"][a] != 1
                                        or tuple(params["padding"][a]) != (0, 0)):
                raise UnsupportedOpError(f"{name} pools across channels at {where}")
        return [lab.of(key)]
    if name == "concatenate":
        return [_concatenate(lab, eqn, shape)]
    if name == "pad":
        for a, (lo, hi, interior) in enumerate(params["padding_config"]):
            if lab.get(key, a) is not None and (lo, hi, interior) != (0, 0, 0):
                raise UnsupportedOpError(f"pad on a channel axis at {where}")
        return [lab.of(key)]
    if name == "slice":
        out = {}
        for a, factors in lab.of(key).items():
            start, limit = params["start_indices"][a], params["limit_indices"][a]
            stride = (params["strides"] or [1] * len(shape))[a]
            if stride != 1:
                raise UnsupportedOpError(f"strided slice of a channel axis at {where}")
            out[a] = tuple(f[start:limit] for f in factors)
        return [out]
    if name == "split":
        axis, bounds = params["axis"], np.cumsum([0] + list(params["sizes"]))
        outs = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out = {a: f for a, f in lab.of(key).items() if a != axis}
            if lab.get(key, axis) is not None:
                out[axis] = tuple(f[lo:hi] for f in lab.get(key, axis))
            outs.append(out)
        return outs
    if any(_touches(lab, k) for k in eqn.ins):
        leaves = describe(lab, [f for k in eqn.ins for fs in lab.of(k).values()
                                for f in fs])
        raise UnsupportedOpError(
            f"the channel tracer has no rule for op {name!r} at {where}, which "
            f"touches the channels of {leaves}")
    return [{} for _ in eqn.outs]


def describe(lab, factors, limit: int = 3) -> str:
    """Names the variable leaves whose channels ``factors`` carry."""
    roots = set()
    for f in factors:
        roots.update(np.unique(lab.ids.roots(f)).tolist())
    names = [path for path, key in zip(lab.graph.leaf_paths, lab.graph.leaf_keys)
             if any(set(np.unique(lab.roots(fs)[0]).tolist()) & roots
                    for fs in lab.of(key).values())]
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "") or "?"


def propagate(graph: Graph) -> Labels:
    """Labels every key's channel axes; leaves get fresh ids on every axis."""
    lab = Labels(graph)
    for key in graph.leaf_keys + graph.const_keys:
        lab.axes[key] = {a: (lab.ids.fresh(n),)
                         for a, n in enumerate(graph.avals[key].shape) if n > 1}
    for key in graph.input_keys:
        lab.axes[key] = {a: (np.full(n, KEEP),)
                         for a, n in enumerate(graph.avals[key].shape) if n > 1}
    for eqn in graph.eqns:
        for key, out in zip(eqn.outs, _rule(lab, eqn)):
            out = {a: f for a, f in out.items()
                   if f is not None and graph.avals[key].shape[a] > 1}
            if out:
                lab.axes[key] = out
    for key in graph.outs:
        for factors in lab.of(key).values():
            lab.pin(factors, "a model output")
    return lab


def num_elements(shape) -> int:
    return int(math.prod(shape))
