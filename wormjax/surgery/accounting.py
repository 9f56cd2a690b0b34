"""Honest costs: parameters and FLOPs of a network as it computes after pruning.

Mask-mode pruning zeroes only the ticket's BatchNorm entries, so counting non-zero
parameters leaves every dead conv filter and every input slice reading a silenced
channel in the count (145,208 of 145,554 for a 50% channel ticket). The costs here
are those of the compact network: what is left once those are removed, which is what
the masked dense network really computes too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wormjax import costs
from wormjax.surgery import rebuild as compact_lib
from wormjax.surgery import graph as graph_lib

__all__ = ["Cost", "count_params", "pruned_cost", "traced_macs"]


class Cost(NamedTuple):
    """Per-example costs of the dense and the pruned network (eval forward)."""

    params_dense: int
    params_pruned: int
    macs_dense: int  # conv and dense multiply-accumulates, from the traced shapes
    macs_pruned: int
    flops_dense: float  # XLA's cost analysis; nan where the backend reports none
    flops_pruned: float


def _eqn_macs(eqn, shape_of) -> int:
    out = shape_of(eqn.outs[0])
    if eqn.prim.name == "conv_general_dilated":
        rhs = shape_of(eqn.ins[1])
        dn = eqn.params["dimension_numbers"]
        taps = math.prod(rhs[a] for a in dn.rhs_spec[2:])
        return math.prod(out) * rhs[dn.rhs_spec[1]] * taps
    if eqn.prim.name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = shape_of(eqn.ins[0])
        return math.prod(out) * math.prod(lhs[a] for a in lc)
    return 0


def traced_macs(graph, shape_of=None) -> int:
    """Conv and dense MACs of a traced graph (every tap, padding included)."""
    shape_of = shape_of or (lambda key: graph.avals[key].shape)
    return int(sum(_eqn_macs(e, shape_of) for e in graph.eqns))


def _xla_flops(fn, *args) -> float:
    return costs.xla_flops(fn, *args)


# Re-exported: the one parameter count (``wormjax.costs``).
count_params = costs.count_params


def pruned_cost(model, variables, ticket: dict, example_input, **compact_kwargs) -> Cost:
    """Parameters and per-example FLOPs of ``model`` before and after the ticket.

    Args:
      model: the dense linen module.
      variables: its variables.
      ticket: ``{path: keep mask}`` (``layout.split(mask)``).
      example_input: an input batch; FLOPs and MACs are divided by its size.
      **compact_kwargs: passed to ``compact`` (``min_channels``, ...).

    Returns:
      A ``Cost``. The pruned counts hold in mask mode as well: the masked dense model
      computes the same values, the removed work only multiplies zeros.
    """
    small = compact_lib.compact(model, variables, ticket, example_input,
                                **compact_kwargs)
    kwargs = compact_lib.eval_kwargs(model)
    batch = np.shape(example_input)[0]
    x = jax.ShapeDtypeStruct(np.shape(example_input), jnp.result_type(example_input))
    dense_graph = graph_lib.trace(lambda v, x: model.apply(v, x, **kwargs),
                                  variables, x)
    run, _ = small._run(small.variables, (x,), False, None, kwargs)
    return Cost(
        params_dense=count_params(variables), params_pruned=small.num_params,
        macs_dense=traced_macs(dense_graph) // batch,
        macs_pruned=traced_macs(run.graph, run.shape) // batch,
        flops_dense=_xla_flops(lambda v, x: model.apply(v, x, **kwargs),
                               variables, x) / batch,
        flops_pruned=_xla_flops(lambda v, x: small.apply(v, x, **kwargs),
                                small.variables, x) / batch)
