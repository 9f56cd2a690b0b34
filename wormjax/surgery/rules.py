"""The channel rule of each primitive: how its output axes follow its operands'.

A conv or dense layer ties its input features to the kernel's input axis and labels
its output with the kernel's output axis (a grouped conv keeps whole groups); an
elementwise op (BatchNorm arithmetic, a residual add) ties its operands position by
position; a reshape that merges axes (a flatten) gives the merged axis one factor per
labelled axis; reductions over a channel axis pin it. An op without a rule that
touches a channel raises ``UnsupportedOpError`` naming the op, its module and the
variables whose channels reach it.
"""

from __future__ import annotations

import numpy as np

from wormjax.surgery.labels import KEEP
from wormjax.surgery.labels import describe
from wormjax.surgery.trace import Lit

__all__ = ["ELEMENTWISE", "UnsupportedOpError", "reshape_groups", "rule"]


class UnsupportedOpError(ValueError):
    """An op the tracer cannot map channels through touches a channel axis."""


def _shape(graph, key):
    return tuple(np.shape(key.value)) if isinstance(key, Lit) else graph.avals[key].shape


def _touches(labels, key) -> bool:
    """Whether ``key`` carries any removable channel (not only KEEP)."""
    return any(np.any(labels.ids.roots(f) != KEEP)
               for factors in labels.of(key).values() for f in factors)


def reshape_groups(old, new):
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
    for old_axes, new_axes in reshape_groups(old, new):
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


def rule(lab, eqn):
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
