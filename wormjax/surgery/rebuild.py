"""``compact``: the smaller network a channel ticket leaves, for any Flax CNN.

The dense model's eval forward pass is traced (``graph``), the ticket is turned into
the surviving channels of every variable leaf (``plan``), and the leaves are sliced.
The compact network is then either

- a **real Flax module** of narrower width, where a constructor for one is registered
  (``register_narrower``; the library's VGG and ResNet register ``channels=``), or
- a **function over the sliced parameters**: each call traces the dense model with
  abstract dense shapes for that call's signature (``train=``, ``mutable=``, input
  shape) and runs its jaxpr with every shape-bearing equation rewritten to the kept
  channel counts. It is plain JAX: it jits, differentiates and ``jax.export``s.
  ``custom_jvp`` bodies are inlined, so ``jax.nn.relu``'s gradient at exactly 0 is
  ``max``'s (1/2) rather than 0; away from exact ties the gradients are the same.

Either computes what the dense model computes with the removed channels silenced.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wormjax.surgery import graph as graph_lib
from wormjax.surgery import plan as plan_lib
from wormjax.surgery.graph import Lit
from wormjax.variables import path_str

__all__ = ["Compact", "channel_plan", "compact", "from_plan", "register_narrower",
           "eval_kwargs"]

_NARROWERS: dict[type, Callable] = {}


def register_narrower(cls: type, build: Callable) -> None:
    """Registers ``build(model, compact_shapes) -> narrower module`` for ``cls``.

    ``compact_shapes`` maps each variable path ('params/bn0/scale') to its compact
    shape; ``compact`` checks that the module's variables have exactly those shapes.
    """
    _NARROWERS[cls] = build


def eval_kwargs(model) -> dict:
    """``{'train': False}`` where ``model.__call__`` takes ``train``, else ``{}``."""
    params = inspect.signature(type(model).__call__).parameters
    return {"train": False} if "train" in params else {}


class _Run:
    """One traced signature: the labelled graph and the kept channels."""

    def __init__(self, graph, lab, keep, root):
        self.graph, self.lab, self.keep, self.root = graph, lab, keep, root

    def alive(self, key, axis):
        factors = self.lab.get(key, axis)
        return None if factors is None else plan_lib.alive(
            self.lab, self.keep, self.root, factors)

    def shape(self, key):
        if isinstance(key, Lit):
            return np.shape(key.value)
        shape = list(self.graph.avals[key].shape)
        for axis in self.lab.of(key):
            shape[axis] = int(self.alive(key, axis).sum())
        return tuple(shape)

    def slice(self, key, value):
        for axis in self.lab.of(key):
            value = _take(value, self.alive(key, axis), axis)
        return value

    def params(self, eqn):
        name, params = eqn.prim.name, dict(eqn.params)
        if name == "broadcast_in_dim":
            params["shape"] = self.shape(eqn.outs[0])
        elif name == "reshape":
            params.update(new_sizes=self.shape(eqn.outs[0]), dimensions=None)
        elif name == "conv_general_dilated" and params["feature_group_count"] > 1:
            dn = params["dimension_numbers"]
            params["feature_group_count"] = (self.shape(eqn.ins[0])[dn.lhs_spec[1]]
                                             // self.shape(eqn.ins[1])[dn.rhs_spec[1]])
        elif name == "slice":
            start, limit = list(params["start_indices"]), list(params["limit_indices"])
            for axis in self.lab.of(eqn.ins[0]):
                mask = self.alive(eqn.ins[0], axis)
                start[axis], limit[axis] = (int(mask[:start[axis]].sum()),
                                            int(mask[:limit[axis]].sum()))
            params.update(start_indices=tuple(start), limit_indices=tuple(limit))
        elif name == "split":
            params["sizes"] = tuple(self.shape(k)[params["axis"]] for k in eqn.outs)
        return params

    def __call__(self, leaves, inputs):
        graph, env = self.graph, {}
        env.update(zip(graph.leaf_keys, leaves))
        env.update(zip(graph.input_keys, inputs))
        env.update((k, self.slice(k, c)) for k, c in zip(graph.const_keys, graph.consts))
        for eqn in graph.eqns:
            args = [k.value if isinstance(k, Lit) else env[k] for k in eqn.ins]
            out = eqn.prim.bind(*args, **self.params(eqn))
            outs = out if eqn.prim.multiple_results else [out]
            for key, value in zip(eqn.outs, outs):
                if tuple(np.shape(value)) != self.shape(key):
                    raise ValueError(f"compact {eqn.prim.name} at {eqn.where} gave "
                                     f"shape {np.shape(value)}, expected "
                                     f"{self.shape(key)}")
                env[key] = value
        return [k.value if isinstance(k, Lit) else env[k] for k in graph.outs]


def _take(value, mask, axis):
    """``value`` at the ``mask`` positions of ``axis``; numpy for concrete values."""
    if mask.all():
        return value
    if isinstance(value, jax.core.Tracer):
        return jnp.take(value, np.flatnonzero(mask), axis=axis)
    return np.take(np.asarray(value), np.flatnonzero(mask), axis=axis)


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                                 jnp.result_type(x)),
                                  tree)


class Compact:
    """The compact network: ``apply`` as ``model.apply``, ``variables``, counts.

    Attributes:
      model: the dense model it was cut from.
      module: the narrower Flax module, or None when ``apply`` runs the sliced jaxpr.
      variables: the compact variables (same tree as the dense ones, fewer channels).
      plan: the ``Plan`` (kept positions per leaf, floored and pinned layers, groups).
    """

    def __init__(self, model, dense_shapes: dict, plan, variables, module=None):
        self.model, self.module, self.plan = model, module, plan
        self.variables, self._dense, self._runs = variables, dense_shapes, {}

    @property
    def num_params(self) -> int:
        """Entries of the compact 'params' collection."""
        tree = self.variables["params"] if "params" in self.variables else self.variables
        return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))

    def _run(self, variables, inputs, mutable, rngs, kwargs):
        flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
        paths = tuple(path_str(p) for p, _ in flat)
        unknown = [p for p in paths if p not in self._dense]
        if unknown:
            raise ValueError(f"variables {unknown[:3]} are not the compact model's")
        sig = (treedef, paths, tuple((np.shape(x), jnp.result_type(x))
                                     for x in jax.tree_util.tree_leaves(inputs)),
               str(mutable), tuple(sorted(kwargs.items())), rngs is not None)
        if sig not in self._runs:
            dense = jax.tree_util.tree_unflatten(treedef, [self._dense[p] for p in paths])

            def fn(v, x, r):
                extra = {"rngs": r} if r is not None else {}
                if mutable is not False:
                    extra["mutable"] = mutable
                return self.model.apply(v, *x, **extra, **kwargs)

            graph = graph_lib.trace(fn, dense, _abstract(inputs), _abstract(rngs))
            lab = graph_lib.propagate(graph)
            keep, root = plan_lib.keep_from_leaves(graph, lab, self.plan.leaf_keep)
            run = _Run(graph, lab, keep, root)
            self._runs[sig] = run, jax.jit(run.__call__)
        return self._runs[sig]

    def apply(self, variables, *inputs, mutable=False, rngs=None, **kwargs):
        """Runs the compact network; the calling convention of ``model.apply``."""
        if self.module is not None:
            extra = {"rngs": rngs} if rngs is not None else {}
            return self.module.apply(variables, *inputs, mutable=mutable, **extra,
                                     **kwargs)
        run, jitted = self._run(variables, inputs, mutable, rngs, kwargs)
        leaves = jax.tree_util.tree_leaves(variables)
        extra = jax.tree_util.tree_leaves(rngs) if rngs is not None else []
        outs = jitted(leaves, list(jax.tree_util.tree_leaves(inputs)) + extra)
        return jax.tree_util.tree_unflatten(run.graph.out_tree, outs)

    def export(self, *inputs, **kwargs):
        """``jax.export.Exported`` of ``apply(variables, *inputs, **kwargs)``."""
        return jax.export.export(jax.jit(lambda v, *x: self.apply(v, *x, **kwargs)))(
            _abstract(self.variables), *_abstract(inputs))


def _check_ticket(ticket: dict, shapes: dict, model_name: str) -> dict:
    """``{variable path: bool mask}``; paths may omit the 'params/' prefix."""
    if not ticket:
        raise ValueError("the ticket is empty: pass layout.split(keep_mask)")
    out = {}
    vectors = sorted(p for p, s in shapes.items() if len(s) == 1)
    for path, mask in ticket.items():
        full = path if path in shapes else f"params/{path}"
        if full not in shapes:
            raise ValueError(
                f"ticket entry {path!r} names no variable of {model_name} (a ticket for "
                f"another model?); its per-channel vectors include {vectors[:6]}")
        mask = np.asarray(mask)
        if mask.shape != tuple(shapes[full]) or mask.ndim != 1:
            raise ValueError(
                f"ticket entry {path!r} has shape {mask.shape}; {model_name}'s layer "
                f"{full.rpartition('/')[0]!r} has {tuple(shapes[full])} (one entry per "
                f"channel of a 1-D leaf)")
        out[full] = mask != 0
    return out


def channel_plan(model, variables, ticket: dict, *example_inputs, min_channels: int = 1,
                 channel_multiple: int = 1, trace_kwargs: dict | None = None,
                 companions=("bias",)) -> plan_lib.Plan:
    """Which channels of every variable leaf survive a ticket; nothing is sliced.

    Args as ``compact``; ``variables`` may be ``jax.ShapeDtypeStruct``s, and then
    the floor adds the lowest-index channels (every score is zero).
    """
    if not example_inputs:
        raise ValueError("compact needs an example input to trace the model with")
    for name, value in (("min_channels", min_channels),
                        ("channel_multiple", channel_multiple)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    flat, _ = jax.tree_util.tree_flatten_with_path(variables)
    values = {path_str(p): (np.zeros(x.shape) if isinstance(x, jax.ShapeDtypeStruct)
                         else x) for p, x in flat}
    shapes = {p: tuple(np.shape(x)) for p, x in values.items()}
    checked = _check_ticket(ticket, shapes, type(model).__name__)
    kwargs = eval_kwargs(model) if trace_kwargs is None else dict(trace_kwargs)
    graph = graph_lib.trace(lambda v, *x: model.apply(v, *x, **kwargs),
                            _abstract(variables), *_abstract(example_inputs))
    lab = graph_lib.propagate(graph)
    return plan_lib.decide(graph, lab, checked, values, min_channels=min_channels,
                           channel_multiple=channel_multiple, companions=companions)[2]


def compact(model, variables, ticket: dict, *example_inputs, min_channels: int = 1,
            channel_multiple: int = 1, trace_kwargs: dict | None = None,
            companions=("bias",)) -> Compact:
    """Cuts the channels a ticket prunes out of a Flax linen model.

    Args:
      model: the dense linen module.
      variables: its variables (``{'params', 'batch_stats', ...}``); left unchanged.
      ticket: ``{path: keep mask}`` over per-channel leaves, as ``layout.split(mask)``
        gives for a ``batchnorm_selector`` layout ('bn1/scale' or 'params/bn1/scale').
      *example_inputs: an input batch (arrays or ShapeDtypeStructs) to trace with.
      min_channels: the fewest channels a ticket layer keeps (the floor).
      channel_multiple: round each ticket layer's count up to a multiple; 1 = off.
      trace_kwargs: keyword arguments of the traced eval call; default
        ``eval_kwargs(model)``.
      companions: sibling leaves silenced with a ticket leaf (BatchNorm's bias).

    Returns:
      A ``Compact``; ``plan`` tells which channels survived and why.

    Raises:
      ValueError: a ticket that does not match the model; ``UnsupportedOpError``
        (a ValueError) for an op the tracer cannot map channels through.
    """
    plan = channel_plan(model, variables, ticket, *example_inputs,
                        min_channels=min_channels, channel_multiple=channel_multiple,
                        trace_kwargs=trace_kwargs, companions=companions)
    return from_plan(model, variables, plan, *example_inputs,
                     trace_kwargs=trace_kwargs, sliced=False)


def from_plan(model, variables, plan, *example_inputs, trace_kwargs=None,
              sliced: bool = False) -> Compact:
    """The ``Compact`` of ``plan``: ``variables`` are dense (sliced here) or, with
    ``sliced=True``, already the compact ones (a reload: the dense model's shapes come
    from ``jax.eval_shape`` of its init on ``example_inputs``)."""
    kwargs = eval_kwargs(model) if trace_kwargs is None else dict(trace_kwargs)
    name = type(model).__name__
    if sliced:
        abstract = jax.eval_shape(lambda *x: model.init(jax.random.PRNGKey(0), *x,
                                                        **kwargs),
                                  *_abstract(example_inputs))
        dense = {path_str(p): jax.ShapeDtypeStruct(x.shape, x.dtype)
                 for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    else:
        dense = {path_str(p): jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
                 for p, x in jax.tree_util.tree_flatten_with_path(variables)[0]}
    missing = sorted(set(plan.leaf_keep) ^ set(dense))
    if missing:
        raise ValueError(f"the plan does not match {name}'s variables: {missing[:4]}")

    def cut(key_path, leaf):
        out = leaf
        for axis, mask in plan.leaf_keep[path_str(key_path)].items():
            out = _take(out, mask, axis)
        return jnp.asarray(out)

    if not sliced:
        variables = jax.tree_util.tree_map_with_path(cut, variables)
    sliced = variables
    for p, x in jax.tree_util.tree_flatten_with_path(sliced)[0]:
        want = list(dense[path_str(p)].shape)
        for axis, mask in plan.leaf_keep[path_str(p)].items():
            want[axis] = int(np.sum(mask))
        if tuple(np.shape(x)) != tuple(want):
            raise ValueError(f"compact variable {path_str(p)!r} has shape {np.shape(x)}; "
                             f"the plan keeps {tuple(want)}")
    module = None
    if type(model) in _NARROWERS:
        shapes = {path_str(p): np.shape(x)
                  for p, x in jax.tree_util.tree_flatten_with_path(sliced)[0]}
        module = _NARROWERS[type(model)](model, shapes)
        built = jax.eval_shape(lambda *x: module.init(jax.random.PRNGKey(0), *x,
                                                      **kwargs),
                               *_abstract(example_inputs))
        got = {path_str(p): tuple(x.shape)
               for p, x in jax.tree_util.tree_flatten_with_path(built)[0]}
        if got != {p: tuple(s) for p, s in shapes.items()}:
            raise ValueError(f"the narrower {name} registered for compact builds "
                             f"other shapes than the sliced variables")
    return Compact(model, dense, plan, sliced, module)


def silenced(variables, plan, ticket_paths, companions=("bias",)):
    """The dense variables with every removed ticket channel's scale and bias zeroed.

    What mask-mode pruning computes; the compact network equals it.
    """
    targets = set()
    for path in ticket_paths:
        path = path if path in plan.leaf_keep else f"params/{path}"
        module, _, leaf = path.rpartition("/")
        targets.update([path] + [f"{module}/{c}" for c in companions])

    def visit(key_path, leaf):
        path = path_str(key_path)
        if path not in targets:
            return leaf
        return jnp.where(plan.leaf_keep[path][0], leaf, 0).astype(jnp.result_type(leaf))

    return jax.tree_util.tree_map_with_path(visit, variables)

