"""Which channels survive: the ticket, the union rule, exactness pins and the floor.

The rule, applied to the components of ``graph.propagate``:

1. Union: a component survives if any ticket entry in it is kept (a residual stream
   channel survives if any BatchNorm summed into it keeps it); a component no ticket
   entry reaches always survives.
2. Exactness: a component also survives where removing it would change what the dense
   model computes with the pruned channels silenced (their BatchNorm scale and bias
   zeroed): where it reaches a model output or a reduction over channels (LayerNorm's
   statistics), where a conv or dense layer reads it and it is not provably zero there
   (a silenced BatchNorm followed by a sigmoid, a bias added after it), and where two
   operands of one op would keep different positions. These are reported as ``pinned``.
3. Floor: every ticket entry keeps at least ``min_channels`` channels (rounded up to a
   multiple of ``channel_multiple``), adding its largest-|value| removed channels,
   lowest index first on ties, the value of a component being its largest |entry|.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wormjax.surgery import graph as graph_lib
from wormjax.surgery.graph import KEEP, Lit

__all__ = ["Plan", "decide", "keep_from_leaves", "alive"]


class Plan(NamedTuple):
    """The decision, per variable leaf, and what the rules changed."""

    leaf_keep: dict  # leaf path -> {axis: bool mask of surviving positions}
    floored: tuple  # ticket paths topped up to the floor
    pinned: tuple  # (ticket path, channels kept, why)
    groups: tuple  # ticket paths whose channels are coupled


def alive(lab, keep, root, factors) -> np.ndarray:
    return np.logical_and.reduce([keep[root[f]] for f in factors])


def _zero_rules(name):
    if name in ("mul",):
        return "any"
    if name in ("add", "sub", "max", "min", "add_any", "select_n"):
        return "all"
    if name in ("neg", "convert_element_type", "integer_pow", "square", "sqrt", "abs",
                "sign", "tanh", "sin", "erf", "reduce_precision", "copy", "copy_p",
                "expm1", "log1p", "cbrt", "div", "reduce_window_sum",
                "reduce_window_max", "reduce_window_min", "stop_gradient"):
        return "first"
    return None


def _neutral(name, value) -> bool:
    """Whether ``op(0, value) == 0``: relu's max(x, 0), relu6's min(x, 6)."""
    value = np.asarray(value)
    if name == "max":
        return bool(np.all(value <= 0))
    if name == "min":
        return bool(np.all(value >= 0))
    return bool(np.all(value == 0))


def _zeros(graph, lab, keep, root, silenced):
    """Per key ``{axis: mask}`` of slices that are identically zero when silenced."""
    z = {key: {0: ~keep[root[lab.axes[key][0][0]]]} for key in silenced}
    scalars = {}  # keys holding a known scalar (jnp.pad's converted 0)

    def literal(key):
        return key if isinstance(key, Lit) else scalars.get(key)

    for eqn in graph.eqns:
        name, shape = eqn.prim.name, graph.avals[eqn.outs[0]].shape if eqn.outs else ()
        if name == "convert_element_type" and literal(eqn.ins[0]) is not None:
            scalars[eqn.outs[0]] = literal(eqn.ins[0])
        ins = [() if isinstance(k, Lit) else graph.avals[k].shape for k in eqn.ins]
        zin = [{} if isinstance(k, Lit) else z.get(k, {}) for k in eqn.ins]
        rule, out = _zero_rules(name), {}
        operands = list(zip(eqn.ins, ins, zin))[1:] if name == "select_n" else list(
            zip(eqn.ins, ins, zin))
        if rule == "any":
            for _, s, zi in operands:
                for a, m in zi.items():
                    if len(s) == len(shape) and s[a] == shape[a]:
                        out[a] = out.get(a, False) | m
        elif rule == "all":
            if all(len(s) == len(shape) or (isinstance(k, Lit) and _neutral(name, k.value))
                   for k, s, _ in operands):
                full = [(s, zi) for k, s, zi in operands if len(s) == len(shape)]
                for a in range(len(shape)):
                    # An operand broadcast along ``a`` is zero there only if all of it
                    # is zero, which is not tracked: it breaks the zero.
                    if full and all(a in zi and s[a] == shape[a] for s, zi in full):
                        out[a] = np.logical_and.reduce([zi[a] for _, zi in full])
        elif rule == "first" and len(ins[0]) == len(shape):
            out = {a: m for a, m in zin[0].items() if ins[0][a] == shape[a]}
        elif name == "broadcast_in_dim":
            out = {d: zin[0][i] for i, d in enumerate(eqn.params["broadcast_dimensions"])
                   if i in zin[0] and ins[0][i] == shape[d]}
        elif name == "transpose":
            out = {i: zin[0][a] for i, a in enumerate(eqn.params["permutation"])
                   if a in zin[0]}
        elif name in ("reduce_sum", "reduce_max", "reduce_min", "squeeze"):
            gone = eqn.params.get("axes", eqn.params.get("dimensions"))
            rest = [a for a in range(len(ins[0])) if a not in gone]
            out = {i: zin[0][a] for i, a in enumerate(rest) if a in zin[0]}
        elif name == "reshape":
            for old, new in graph_lib.reshape_groups(ins[0], shape):
                hit = [a for a in old if a in zin[0]]
                if len(hit) == 1 and len(new) == 1:
                    view = [1] * len(old)
                    view[old.index(hit[0])] = ins[0][hit[0]]
                    sizes = [ins[0][a] for a in old]
                    out[new[0]] = np.broadcast_to(zin[0][hit[0]].reshape(view),
                                                  sizes).ravel()
        elif name == "pad" and literal(eqn.ins[1]) is not None and _neutral(
                "add", literal(eqn.ins[1]).value):
            out = {a: m for a, m in zin[0].items()
                   if tuple(eqn.params["padding_config"][a]) == (0, 0, 0)}
        elif name == "slice":
            start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
            out = {a: m[start[a]:limit[a]] for a, m in zin[0].items()}
        elif name == "dot_general":  # a zero slice along a free axis stays zero
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            free = ([(0, a) for a in range(len(ins[0])) if a not in lc + lb]
                    + [(1, b) for b in range(len(ins[1])) if b not in rc + rb])
            out = {len(lb) + i: zin[side][a] for i, (side, a) in enumerate(free)
                   if a in zin[side]}
        elif name == "concatenate":
            axis = eqn.params["dimension"]
            if any(axis in zi for zi in zin):
                out[axis] = np.concatenate([zi.get(axis, np.zeros(s[axis], bool))
                                            for s, zi in zip(ins, zin)])
        if out:
            z[eqn.outs[0]] = out
    return z


def _enforce(graph, lab, keep, root, silenced, why):
    """Keeps components until every op sees consistent, exact operands."""
    while True:
        changed = False

        def hold(factors, mask, reason):
            nonlocal changed
            for f in factors:
                r = root[f[np.asarray(mask, bool)]]
                fresh = r[~keep[r]]
                if fresh.size:
                    keep[fresh], changed = True, True
                    for q in np.unique(fresh):
                        why.setdefault(int(q), reason)

        z = _zeros(graph, lab, keep, root, silenced)
        for eqn, lhs, la, rhs, ra in lab.consumers:
            fl, fr = lab.get(lhs, la), lab.get(rhs, ra)
            if fl is None or fr is None:
                continue
            al, ar = alive(lab, keep, root, fl), alive(lab, keep, root, fr)
            none = np.zeros(al.shape, bool)
            zero = z.get(lhs, {}).get(la, none) | z.get(rhs, {}).get(ra, none)
            bad = (~al | ~ar) & ~zero
            hold(fl + fr, bad | (al != ar),
                 f"{eqn.prim.name} at {eqn.where or 'top level'} reads them and "
                 f"they are not zero when silenced")
        for eqn in graph.eqns:  # operands of one op must keep the same positions
            if eqn.prim.name not in graph_lib.ELEMENTWISE:
                continue
            shape = graph.avals[eqn.outs[0]].shape
            for axis in range(len(shape)):
                parts = [lab.get(k, axis) for k in eqn.ins
                         if not isinstance(k, Lit) and graph.avals[k].shape[axis:axis + 1]
                         == shape[axis:axis + 1]]
                parts = [p for p in parts if p is not None]
                masks = [alive(lab, keep, root, p) for p in parts]
                if masks and any((m != masks[0]).any() for m in masks):
                    diff = np.logical_or.reduce([m != masks[0] for m in masks])
                    hold(sum(parts, ()), diff, f"{eqn.prim.name} at {eqn.where} mixes "
                         f"them with channels kept elsewhere")
        if not changed:
            return keep


def decide(graph, lab, ticket: dict, values: dict, *, min_channels: int = 1,
           channel_multiple: int = 1, companions=("bias",)) -> tuple:
    """``(keep by component root, root of every id, Plan)`` for a checked ticket.

    Args:
      graph, lab: the traced eval-mode forward pass and its labels.
      ticket: ``{leaf path: bool mask}`` over 1-D leaves (checked by the caller).
      values: ``{leaf path: dense values}`` of the ticket leaves (the floor's scores).
      min_channels, channel_multiple: the floor.
      companions: sibling leaf names silenced with a ticket leaf (BatchNorm's bias).
    """
    root = lab.ids.roots(np.arange(len(lab.ids.parent)))
    key_of = dict(zip(graph.leaf_paths, graph.leaf_keys))
    n = root.size
    has, kept, score = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    ticket_roots, silenced = {}, []
    for path, mask in ticket.items():
        if 0 not in lab.axes.get(key_of[path], {}):
            continue  # a single channel: nothing to remove
        r = root[lab.axes[key_of[path]][0][0]]
        ticket_roots[path] = r
        has[r] = True
        np.logical_or.at(kept, r, np.asarray(mask, bool))
        np.maximum.at(score, r, np.abs(np.asarray(values[path], np.float64)))
        module = path.rpartition("/")[0]
        for name in (path.rpartition("/")[2],) + tuple(companions):
            sib = key_of.get(f"{module}/{name}")
            if sib is not None and graph.avals[sib].shape == np.shape(mask):
                silenced.append(sib)
    keep = ~has | kept
    keep[KEEP] = True
    why = {}
    for factors, reason in lab.pinned:
        for f in factors:
            r = root[f]
            for q in np.unique(r[~keep[r]]):
                why.setdefault(int(q), reason)
            keep[r] = True
    keep = _enforce(graph, lab, keep, root, silenced, why)
    # Counted before any top-up: every member of a coupled group is floored.
    floored = [p for p, r in ticket_roots.items() if int(keep[r].sum()) < min_channels]
    for path, r in ticket_roots.items():
        count = int(keep[r].sum())
        target = min(-(-max(min_channels, count) // channel_multiple) * channel_multiple,
                     r.size)
        for i in np.argsort(-score[r], kind="stable"):
            if int(keep[r].sum()) >= target:
                break
            keep[r[i]] = True
    keep = _enforce(graph, lab, keep, root, silenced, why)
    pinned = []
    for path, r in ticket_roots.items():
        reasons = [why[int(q)] for q in r if int(q) in why and has[q]]
        if reasons:
            pinned.append((path, len(reasons), reasons[0]))
    owners = {}
    for path, r in ticket_roots.items():
        for q in np.unique(r):
            owners.setdefault(int(q), []).append(path)
    groups = sorted({tuple(p) for p in owners.values() if len(p) > 1})
    leaf_keep = {path: {a: alive(lab, keep, root, f) for a, f in lab.of(key).items()}
                 for path, key in key_of.items()}
    return keep, root, Plan(leaf_keep, tuple(floored), tuple(pinned), tuple(groups))


def keep_from_leaves(graph, lab, leaf_keep: dict) -> tuple:
    """``(keep, root)`` for another trace of the same model, from a Plan's leaves."""
    root = lab.ids.roots(np.arange(len(lab.ids.parent)))
    votes_keep, votes_drop = np.zeros(root.size, bool), np.zeros(root.size, bool)
    for path, key in zip(graph.leaf_paths, graph.leaf_keys):
        # Raw labels: one fresh factor per leaf axis (an alias votes for itself only).
        for axis, factors in lab.axes.get(key, {}).items():
            mask = leaf_keep[path][axis]
            np.logical_or.at(votes_keep, root[factors[0]], mask)
            np.logical_or.at(votes_drop, root[factors[0]], ~mask)
    clash = votes_keep & votes_drop
    if clash.any():
        raise ValueError("this call of the model couples channels that the compact "
                         "plan (traced in eval mode) separated; trace it with the "
                         "same structure")
    return ~votes_drop, root
