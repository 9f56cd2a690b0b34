"""Structured pruning of any Flax CNN: channel graph, compact network, honest costs."""

from wormjax.surgery.nnx_compact import compact_nnx
from wormjax.surgery.rebuild import Compact
from wormjax.surgery.rebuild import channel_plan
from wormjax.surgery.rebuild import compact as compact_linen
from wormjax.surgery.rebuild import eval_kwargs
from wormjax.surgery.rebuild import from_plan
from wormjax.surgery.rebuild import register_narrower
from wormjax.surgery.rebuild import silenced
from wormjax.surgery.graph import UnsupportedOpError
from wormjax.surgery.plan import Plan


def compact(model, *args, **kwargs):
    """Cuts a ticket's pruned channels out of a Flax model, linen or NNX.

    Linen: ``compact(model, variables, ticket, example_input)`` returns a
    ``Compact`` (``.apply``, ``.variables``, ``.num_params``). NNX:
    ``compact(module, ticket, example_input)`` returns a narrower NNX module of
    the same class and its plan, ``(module, plan)`` (``compact_nnx``). Keyword
    options are those of either.
    """
    from flax import nnx  # noqa: PLC0415  (NNX only where it is used)
    if isinstance(model, nnx.Module):
        return compact_nnx(model, *args, **kwargs)
    return compact_linen(model, *args, **kwargs)
