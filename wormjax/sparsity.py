"""Network-slimming sparsity on the representative parameters, as an optax transform.

Early-Bird's own training recipe (its ``main.py``, ``updateBN``) adds the L1
subgradient of every BatchNorm scale to the gradient after backward and before
the optimizer step: ``grad(gamma) += s * sign(gamma)``, ``s = 1e-4``. It drives
unimportant channels' scales towards zero, so the ticket mask separates sooner.

``sparsity_penalty(selector, strength)`` does exactly that to the selector's
representative leaves (never their companions: BatchNorm biases get no penalty)
and passes every other leaf through. Put it **first** in the chain, before
``worm_truncation``::

    tx = optax.chain(wormjax.sparsity_penalty(selector, 1e-4),
                     wormjax.worm_truncation(selector),
                     optax.sgd(0.1, momentum=0.9))

Why first: the penalty is part of the gradient (the EB code adds it to
``.grad`` right after backward), and the WORM truncation scales the gradient
after backward, so a pruned channel's whole gradient, penalty included, is
multiplied by ``r``. Swapping the two lines is the other order: the truncation
then scales only the loss gradient and pruned scales keep shrinking at the full
``s``. Either way it sits before weight decay and momentum, as in torch's SGD,
which adds ``weight_decay * p`` inside ``step()``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from wormjax import selectors as selectors_lib

__all__ = ["sparsity_penalty"]


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"sparsity strength must be a number >= 0, got {strength!r}")
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"sparsity strength must be a finite number >= 0, got "
                         f"{strength!r}")
    return float(strength)


def sparsity_penalty(
    selector: selectors_lib.ParamSelector | None = None,
    strength: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    """Adds ``strength * sign(param)`` to the updates of the representative leaves.

    Args:
      selector: picks the representative leaves by path; defaults to
        :func:`wormjax.batchnorm_selector` (the BatchNorm scales). Only the
        representative leaves are penalised, never their companions.
      strength: ``s >= 0``, the L1 coefficient (Early-Bird: 1e-4); 0 is the
        identity.

    Returns:
      A stateless optax ``GradientTransformationExtraArgs``. Its ``update`` needs
      ``params`` (the sign is the parameter's, ``sign(0) = 0``); the added term
      takes each update's dtype, so bf16 stays bf16. Extra arguments are ignored.
    """
    if selector is None:
        selector = selectors_lib.batchnorm_selector()
    if not callable(selector):
        raise ValueError(f"selector must be a ParamSelector, got {selector!r}")
    strength = _check_strength(strength)

    def init_fn(params):
        selector(params)  # a selector that matches nothing fails here, not mid-run
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if strength == 0:
            return updates, state
        if params is None:
            raise ValueError("sparsity_penalty needs params: call "
                             "tx.update(grads, opt_state, params)")
        # The selector's own layout decides which paths are representative; the
        # layout depends on paths and shapes only, so it resolves at trace time.
        penalised = set(selector(params).paths)

        def add(path, update, param):
            if selectors_lib.path_str(path) not in penalised:
                return update
            dtype = jnp.result_type(update)
            return update + jnp.asarray(strength, dtype) * jnp.sign(param).astype(dtype)

        return jax.tree_util.tree_map_with_path(add, updates, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
