"""What a network costs: its parameter count, XLA's FLOPs and analytic MACs.

The one place that counts. Tasks, structured pruning and the benchmarks all
ask here, so a "FLOP" means the same thing in a run's summary, a compact
model's report and a roofline table: XLA's cost analysis of the compiled
program, divided by the batch where a figure is per example.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["compiled_flops", "conv_dense_macs", "count_params", "flops_per_example",
           "xla_flops"]


def count_params(tree) -> int:
    """Number of entries of a parameter tree (the 'params' collection, no BN statistics).

    Args:
      tree: ``{'params': ..., ...}`` (only 'params' is counted) or a bare params
        tree; leaves may be arrays or ``jax.ShapeDtypeStruct``s.

    Returns:
      The total number of entries.
    """
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def compiled_flops(compiled) -> float:
    """FLOPs of a compiled executable (``jit(f).lower(...).compile()``).

    Returns:
      XLA's ``cost_analysis()['flops']``, or nan where the backend reports none.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def xla_flops(fn: Callable, *args: Any, **kwargs: Any) -> float:
    """FLOPs of one call of ``fn(*args, **kwargs)``, from XLA's cost analysis.

    Nothing runs: the function is lowered and compiled only.

    Args:
      fn: a function of arrays, or an already jitted one (its own ``lower`` is
        used, so donation and static arguments stay as they are).
      *args: its arguments: arrays or ``jax.ShapeDtypeStruct``s.
      **kwargs: its keyword arguments, traced like ``args``.

    Returns:
      The FLOPs of the whole call (not per example), or nan where the backend
      reports none.
    """
    lower = fn.lower if hasattr(fn, "lower") else jax.jit(fn).lower
    return compiled_flops(lower(*args, **kwargs).compile())


def flops_per_example(fn: Callable, variables, batch) -> float:
    """FLOPs per example of ``fn(variables, batch)``: ``xla_flops`` over the batch size.

    Args:
      fn: the forward, ``(variables, batch) -> outputs``.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``s).
      batch: an input batch (array or ``jax.ShapeDtypeStruct``, or a pytree of them);
        its first leaf's leading axis is the batch size.

    Returns:
      FLOPs for one example, or nan where the backend reports none.
    """
    size = np.shape(jax.tree_util.tree_leaves(batch)[0])[0]
    return xla_flops(fn, variables, batch) / size


def _taps(size: int, kernel: int, stride: int, pad: int, out: int) -> int:
    """(output position, kernel tap) pairs that read the input, not the zero padding."""
    return sum(0 <= o * stride - pad + t < size
               for o in range(out) for t in range(kernel))


def conv_dense_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Analytic multiply-accumulates per example of a linen model's Conv and Dense layers.

    Taps on zero padding are not counted (nor does XLA; on a CIFAR VGG's 2x2 maps most
    taps are), nor are BN, pooling and biases: ``2 * macs`` is a bit below XLA's FLOPs.

    Args:
      model: the model; its ``__call__`` takes ``(x, train=False)``, and its convs pad
        explicitly (the library CNNs do).
      input_shape: the input batch shape (B, H, W, C); nothing is computed.

    Returns:
      MACs for one example.
    """
    macs = []

    def count(next_fun, args, kwargs, context):
        out, module = next_fun(*args, **kwargs), context.module
        if context.method_name != "__call__":
            return out
        fan = args[0].shape[-1] * out.shape[-1]
        if isinstance(module, nn.Conv):
            strides = np.broadcast_to(module.strides or 1, len(module.kernel_size))
            macs.append(fan * math.prod(
                _taps(n, k, s, p[0], o) for n, k, s, p, o in zip(
                    args[0].shape[1:-1], module.kernel_size, strides, module.padding,
                    out.shape[1:-1])))
        elif isinstance(module, nn.Dense):
            macs.append(fan)
        return out

    def run():
        with nn.intercept_methods(count):
            return model.init(jax.random.PRNGKey(0),
                              jnp.zeros(tuple(input_shape), jnp.float32), train=False)

    jax.eval_shape(run)
    return int(sum(macs))
