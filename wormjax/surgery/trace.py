"""A model's forward pass as one flat list of primitive equations.

``trace`` runs ``jax.make_jaxpr`` and inlines every sub-jaxpr (``jit``,
``custom_jvp``/``custom_vjp``, ``checkpoint``), so the channel rules see only
primitives, each with the flax module path it ran in (for error messages). Keys are
ints; literals stay ``Lit`` operands.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.extend as jex

from wormjax.variables import path_str

__all__ = ["FlatEqn", "Graph", "Lit", "trace"]


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
    paths = [path_str(p) for p, _ in flat]
    return Graph(eqns, avals, in_keys[:n], paths, in_keys[n:], const_keys, consts,
                 outs, jax.tree_util.tree_structure(out_shape))
