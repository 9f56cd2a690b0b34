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

import numpy as np

from wormjax.surgery import rules
from wormjax.surgery.labels import KEEP
from wormjax.surgery.labels import Labels
from wormjax.surgery.labels import describe
from wormjax.surgery.rules import ELEMENTWISE
from wormjax.surgery.rules import UnsupportedOpError
from wormjax.surgery.rules import reshape_groups
from wormjax.surgery.trace import FlatEqn
from wormjax.surgery.trace import Graph
from wormjax.surgery.trace import Lit
from wormjax.surgery.trace import trace

__all__ = ["ELEMENTWISE", "KEEP", "FlatEqn", "Graph", "Lit", "Labels",
           "UnsupportedOpError", "describe", "num_elements", "propagate",
           "reshape_groups", "trace"]


def propagate(graph: Graph) -> Labels:
    """Labels every key's channel axes; leaves get fresh ids on every axis."""
    lab = Labels(graph)
    for key in graph.leaf_keys + graph.const_keys:
        shape = graph.avals[key].shape
        lab.axes[key] = {a: (lab.ids.fresh(n),) for a, n in enumerate(shape) if n > 1}
        if len(shape) > 1:  # never a ticket's per-channel vector: may become an alias
            for (factor,) in lab.axes[key].values():
                lab.add_block(factor)
    for key in graph.input_keys:
        lab.axes[key] = {a: (np.full(n, KEEP),)
                         for a, n in enumerate(graph.avals[key].shape) if n > 1}
    for eqn in graph.eqns:
        for key, out in zip(eqn.outs, rules.rule(lab, eqn)):
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
