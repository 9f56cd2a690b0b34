"""Choosing the representative parameters of a model, once.

A selector turns a parameter pytree into a :class:`TicketLayout`
(``wormjax.layout``): the ordered representative leaves (BatchNorm scales,
attention kernels), their offsets in the flat ticket mask, and the leaves that
share their masks. Paths are canonical (``wormjax.variables``): the same layout reads a linen
params or variables dict, an ``nnx.State``, an ``nnx.Module`` and the pure
gradient trees inside ``nnx.Optimizer.update``.

``batchnorm_selector`` finds BatchNorm layers by what they are, a ``scale``
parameter whose module also holds running ``mean``/``var`` statistics; a
params or gradient tree has no statistics, so the selector is bound once to the
full variables (:meth:`BatchNormSelector.bind`) and then reads any of them.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np

from wormjax import variables as variables_lib
from wormjax.layout import LayoutEntry, TicketLayout, build_layout
from wormjax.layout import leaves_with_paths  # noqa: F401 (re-exported)
from wormjax.variables import path_str

__all__ = [
    "LayoutEntry",
    "TicketLayout",
    "ParamSelector",
    "BatchNormSelector",
    "path_selector",
    "batchnorm_modules",
    "batchnorm_selector",
    "attention_selector",
    "path_str",
]

BATCHNORM_SCALE_PATTERN = r"(^|/)[^/]*(bn|BatchNorm)[^/]*/scale$"
QUERY_KEY_PATTERN = r"(^|/)(query|key)/kernel$"
QUERY_KEY_VALUE_PATTERN = r"(^|/)(query|key|value)/kernel$"


def _check_pattern(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid selector pattern {pattern!r}: {err}") from None


def _listing(paths) -> str:
    return "\n  ".join(paths) or "(none)"


@dataclasses.dataclass(frozen=True)
class ParamSelector:
    """Selects representative leaves by a path regex; see :func:`path_selector`."""

    pattern: str
    companion_fn: Callable[[str], Sequence[str]] | None = None
    description: str = "parameters"

    def __call__(self, params) -> TicketLayout:
        """Builds the :class:`TicketLayout` of ``params`` (arrays or shape structs).

        ``params`` is any tree ``wormjax.variables`` reads; only parameters are
        candidates (not a linen ``batch_stats`` collection, not nnx BatchStats).
        """
        regex = re.compile(self.pattern)
        leaves = variables_lib.param_leaves(params)
        layout = build_layout(leaves, lambda p: bool(regex.search(p)), self.companion_fn)
        if not layout.entries:
            raise ValueError(
                f"no {self.description} match the pattern {self.pattern!r}. "
                f"Available parameter paths:\n  {_listing(p for p, _ in leaves)}"
            )
        return layout

    def bind(self, variables) -> "ParamSelector":
        """This selector, checked against ``variables``; paths need nothing more."""
        self(variables)
        return self


def path_selector(
    pattern: str,
    companion_fn: Callable[[str], Sequence[str]] | None = None,
    description: str = "parameters",
) -> ParamSelector:
    """Representative leaves = every parameter whose ``a/b/c`` path matches ``pattern``.

    Args:
      pattern: a regular expression searched in each parameter's canonical
        path (no ``params/`` collection prefix, no nnx ``/value`` suffix).
      companion_fn: maps a selected path to paths that share its mask (their
        gradients are truncated with it); paths that do not exist are skipped.
      description: what the pattern is meant to select, for error messages.

    Returns:
      A callable ``params -> TicketLayout``.
    """
    _check_pattern(pattern)
    return ParamSelector(pattern, companion_fn, description)


def _bn_bias(path: str) -> tuple[str, ...]:
    return (path[: -len("scale")] + "bias",)


def _module(path: str) -> str:
    return path.rpartition("/")[0]


def _child(module: str, name: str) -> str:
    return f"{module}/{name}" if module else name  # "" is the root module


def batchnorm_modules(variables) -> tuple[str, ...]:
    """Module paths of the BatchNorm layers in ``variables``, found by structure.

    A BatchNorm is a module with a ``scale`` parameter and running ``mean`` and
    ``var`` statistics at the same module path, whatever it is called.

    Args:
      variables: a linen variables dict (``params`` and ``batch_stats``), an
        ``nnx.State`` with its ``BatchStat`` s, or an ``nnx.Module``.

    Raises:
      ValueError: ``variables`` holds no statistics (a params or gradient tree),
        or no module holds both a scale and the statistics.
    """
    flat = variables_lib.flat_variables(variables)
    if not any(v.kind == variables_lib.STAT for v in flat):
        raise ValueError(
            f"the {type(variables).__name__} holds no BatchNorm statistics, so "
            "BatchNorm layers cannot be found by structure: pass the linen "
            "variables dict (with 'batch_stats'), nnx.state(model) or the nnx "
            "module itself, not its params or gradients")
    return _structural_modules(flat)


def _structural_modules(flat: list[variables_lib.FlatVariable]) -> tuple[str, ...]:
    stats = {v.path for v in flat if v.kind == variables_lib.STAT}
    modules = tuple(
        _module(v.path) for v in flat
        if v.kind == variables_lib.PARAM and v.path.rpartition("/")[2] == "scale"
        and {_child(_module(v.path), "mean"), _child(_module(v.path), "var")} <= stats)
    if not modules:
        raise ValueError(
            "no BatchNorm layers: no module holds a 'scale' parameter next to "
            "running 'mean' and 'var' statistics. Modules with statistics:\n  "
            f"{_listing(sorted({_module(p) for p in stats}))}\nSelect other "
            "layers with wormjax.path_selector(regex)")
    return modules


def _norm_like(leaves: list[tuple[str, Any]]) -> set[str]:
    """Modules whose only parameters are ``scale`` (and ``bias``): any norm layer."""
    names: dict[str, set[str]] = {}
    for path, _ in leaves:
        names.setdefault(_module(path), set()).add(path.rpartition("/")[2])
    return {m for m, n in names.items() if "scale" in n and n <= {"scale", "bias"}}


def _concrete(leaf) -> bool:
    return (isinstance(leaf, (jax.Array, np.ndarray))
            and not isinstance(leaf, jax.core.Tracer))


def _warn_constant_layers(layout: TicketLayout, params) -> None:
    """Warns, naming them, about representative layers whose entries are all equal.

    Skipped on tracers and shape structs, for one-entry layers, and when every
    entry of every layer has one value (a fresh network with all scales 1:
    training breaks the ties).
    Issued from this line, so Python's default filter shows each distinct
    message once however many times a layout is built (bind, init, pipeline).
    """
    leaves = layout.representative(params)
    if not all(_concrete(leaf) for leaf in leaves):
        return
    values = [np.unique(np.abs(np.asarray(leaf, np.float32))) for leaf in leaves]
    # A one-entry layer (a compact model's floored layer) ties with nothing.
    constant = {e.path: float(v[0]) for e, v in zip(layout.entries, values)
                if v.size == 1 and e.size > 1}
    if not constant or np.unique(np.concatenate(values)).size == 1:
        return
    named = ", ".join(f"{_module(p)} (all {c:g})" for p, c in sorted(
        constant.items(), key=lambda pc: (pc[1], variables_lib.natural_key(pc[0]))))
    warnings.warn(
        f"representative layers with all-equal entries: {named}. The global "
        "magnitude mask prunes entries equal to its threshold, so such a layer is "
        "kept or pruned as a whole until training separates its entries; one "
        "initialised below the others (zero-init) loses every channel first. "
        "See wormjax.early_bird's docstring on ties", UserWarning)


@dataclasses.dataclass(frozen=True)
class BatchNormSelector(ParamSelector):
    """Every BatchNorm scale, found by structure; see :func:`batchnorm_selector`.

    Attributes:
      modules: the BatchNorm module paths this selector is bound to (None:
        unbound; see :meth:`__call__`).
    """

    modules: tuple[str, ...] | None = None

    def __call__(self, tree) -> TicketLayout:
        """The layout of the BatchNorm scales of ``tree``.

        Which modules are BatchNorms: with statistics in ``tree`` (linen
        variables, ``nnx.state(model)``, an nnx module), found by structure;
        else, when bound, the bound modules; else (an unbound selector given
        bare params or gradients, as the built-in pipeline does) the modules
        whose scale path matches ``pattern``, with a warning naming any
        scale/bias module the pattern leaves out.
        """
        flat = variables_lib.flat_variables(tree)
        leaves = [(v.path, v.leaf) for v in flat if v.kind == variables_lib.PARAM]
        if any(v.kind == variables_lib.STAT for v in flat):
            modules = _structural_modules(flat)
        elif self.modules is not None:
            modules = self.modules
        else:
            modules = self._by_name(leaves)
        scales = {_child(m, "scale") for m in modules}
        missing = sorted(scales - {p for p, _ in leaves})
        if missing:
            raise ValueError(
                f"the parameters lack the bound BatchNorm scales {missing}: the "
                "selector was bound to a different model")
        layout = build_layout(leaves, scales.__contains__, self.companion_fn)
        _warn_constant_layers(layout, tree)
        return layout

    def _by_name(self, leaves) -> list[str]:
        """Modules whose scale path matches ``pattern``: the bare-params fallback."""
        regex = re.compile(self.pattern)
        modules = [_module(p) for p, _ in leaves
                   if p.rpartition("/")[2] == "scale" and regex.search(p)]
        left_out = sorted(_norm_like(leaves) - set(modules))
        hint = ("use batchnorm_selector().bind(variables) with the linen variables "
                "dict (with 'batch_stats'), nnx.state(model) or the nnx module")
        if not modules:
            raise ValueError(
                f"no BatchNorm scales in these parameters: they carry no running "
                f"statistics and no scale path matches {self.pattern!r}. To find "
                f"BatchNorms by structure, {hint}. Parameter paths:\n  "
                f"{_listing(p for p, _ in leaves)}")
        if left_out:
            warnings.warn(
                f"batchnorm_selector() saw no BatchNorm statistics, so it selected "
                f"BatchNorms by name ({self.pattern!r}) and left out the scale/bias "
                f"modules {left_out}. If they are BatchNorms, {hint}", UserWarning)
        return modules

    def bind(self, variables) -> "BatchNormSelector":
        """A selector fixed to the BatchNorm layers of ``variables``.

        Bind once, to the full variables (a linen variables dict, an
        ``nnx.State`` with its ``BatchStat`` s, or the nnx module), and the
        bound selector reads every tree of that model: params, gradients inside
        ``jax.grad`` or ``nnx.Optimizer.update``, optimizer updates.

        Raises:
          ValueError: ``variables`` holds no statistics or no BatchNorm.
        """
        bound = dataclasses.replace(self, modules=batchnorm_modules(variables))
        bound(variables)  # the tie warning, at bind time
        return bound


def batchnorm_selector(
    pattern: str = BATCHNORM_SCALE_PATTERN, include_bias: bool = True
) -> BatchNormSelector:
    """The CNN representative: every BatchNorm scale (one entry per channel).

    A BatchNorm is recognised by structure: a module holding a ``scale``
    parameter and running ``mean``/``var`` statistics (linen ``batch_stats``,
    ``nnx.BatchStat``), whatever it is called (``norm_proj``, ``bn1``, ...). A
    params or gradient tree carries no statistics, so either call
    ``.bind(variables)`` once with the full variables (recommended for your own
    model, and needed for NNX), or rely on ``pattern`` for bare params, as the
    built-in models do (their BatchNorms are all named ``*bn*``/``BatchNorm_*``).

    Args:
      pattern: regex for the scale paths used on bare params of an unbound
        selector; the default matches flax's ``BatchNorm_<i>/scale`` and any
        module whose name contains ``bn``.
      include_bias: truncate each pruned channel's BatchNorm bias (beta) with
        its scale, as docs/algorithm.md section 3 specifies.

    Returns:
      A :class:`BatchNormSelector` (unbound). It warns once, naming them, about
      selected layers whose entries are all equal (zero- or constant-init).
    """
    _check_pattern(pattern)
    return BatchNormSelector(pattern, _bn_bias if include_bias else None,
                             "BatchNorm scales")


def attention_selector(include_value: bool = False, pattern: str | None = None
                       ) -> ParamSelector:
    """The transformer representative: query and key (optionally value) kernels.

    One entry per kernel element; biases are not part of the ticket.
    """
    if pattern is None:
        pattern = QUERY_KEY_VALUE_PATTERN if include_value else QUERY_KEY_PATTERN
    return path_selector(pattern, None, "attention query/key kernels")
