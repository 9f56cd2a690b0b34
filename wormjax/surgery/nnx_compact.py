"""``compact`` for Flax NNX: an NNX module in, a narrower NNX module out.

An NNX module is its graph definition (structure and static attributes) plus its
state (every ``Param`` and ``BatchStat``). The module's eval forward pass is traced
as a function of the state's pure dict, the plan decides the surviving channels of
every state leaf exactly as for linen, and ``nnx.merge`` joins the unchanged graph
definition with the sliced state. NNX layers compute from their arrays' shapes
(``Linear``, ``Conv`` and ``BatchNorm`` read ``kernel``, ``scale``, ``mean``, ...),
so the merged module is a real module of the same class that runs, trains
(``nnx.Optimizer``) and splits like any other. The size attributes of Flax's
own layers (``in_features``, ``out_features``, ``num_features``, ``features``)
are set to the cut arrays' sizes, so that printing the module or building a
layer from them tells the truth; a custom layer's own size attributes are the
user's to update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wormjax.surgery import graph as graph_lib
from wormjax.surgery import plan as plan_lib
from wormjax.surgery.rebuild import _abstract
from wormjax.surgery.rebuild import _check_ticket
from wormjax.surgery.rebuild import _take
from wormjax.variables import path_str

__all__ = ["compact_nnx"]


def _size(layer, name: str, axis: int) -> int | None:
    # The array's size on ``axis``, or None where the layer holds no such array
    # (a LayerNorm without scale and bias computes from its input alone).
    array = getattr(layer, name, None)
    return None if array is None else int(array[...].shape[axis])


def _sync_sizes(module: nnx.Module) -> None:
    """Sets the size attributes of Flax's layers in ``module`` from their arrays."""
    for _, layer in nnx.iter_modules(module):
        if isinstance(layer, nnx.Linear):
            sizes = {"in_features": _size(layer, "kernel", 0),
                     "out_features": _size(layer, "kernel", -1)}
        elif isinstance(layer, nnx.Conv):
            # A grouped kernel holds in_features / groups input channels.
            kernel_in = _size(layer, "kernel", -2)
            sizes = {"in_features": kernel_in * layer.feature_group_count,
                     "out_features": _size(layer, "kernel", -1)}
        elif isinstance(layer, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
            sizes = {"num_features": next(
                (s for s in (_size(layer, n, -1) for n in ("scale", "bias", "mean"))
                 if s is not None), None)}
        elif isinstance(layer, nnx.Embed):
            sizes = {"num_embeddings": _size(layer, "embedding", 0),
                     "features": _size(layer, "embedding", -1)}
        else:
            continue
        for name, size in sizes.items():
            if size is not None and hasattr(layer, name):
                setattr(layer, name, size)


def compact_nnx(module: nnx.Module, ticket: dict, *example_inputs,
                min_channels: int = 1, channel_multiple: int = 1,
                companions=("bias",)):
    """Cuts the channels a ticket prunes out of an NNX module.

    Args:
      module: the dense NNX module; left unchanged.
      ticket: ``{state path: keep mask}`` over per-channel leaves ('bn1/scale').
      *example_inputs: an input batch to trace the eval forward pass with.
      min_channels, channel_multiple, companions: as in ``compact``.

    Returns:
      ``(small, plan)``: the narrower module (same class, same train/eval mode as
      ``module``) and the ``Plan``.
    """
    if not example_inputs:
        raise ValueError("compact needs an example input to trace the model with")
    graphdef, state = nnx.split(module)
    pure = nnx.to_pure_dict(state)

    def forward(values, *x):
        fresh = nnx.split(module)[1]
        nnx.replace_by_pure_dict(fresh, values)
        dense = nnx.merge(graphdef, fresh)
        dense.eval()  # the plan is traced in eval mode, as for linen
        return dense(*x)

    flat = jax.tree_util.tree_flatten_with_path(pure)[0]
    values = {path_str(p): x for p, x in flat}
    checked = _check_ticket(ticket, {p: np.shape(x) for p, x in values.items()},
                            type(module).__name__)
    graph = graph_lib.trace(forward, _abstract(pure), *_abstract(example_inputs))
    lab = graph_lib.propagate(graph)
    _, _, plan = plan_lib.decide(graph, lab, checked, values, min_channels=min_channels,
                                 channel_multiple=channel_multiple,
                                 companions=companions)

    def cut(key_path, leaf):
        for axis, mask in plan.leaf_keep[path_str(key_path)].items():
            leaf = _take(leaf, mask, axis)
        return jnp.asarray(leaf)

    small_state = nnx.split(module)[1]
    nnx.replace_by_pure_dict(small_state, jax.tree_util.tree_map_with_path(cut, pure))
    small = nnx.merge(graphdef, small_state)
    _sync_sizes(small)
    return small, plan
