"""sparsity_penalty: the exact network-slimming term and optax interoperability."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wormjax

S = 0.25  # a strength large enough that the hand-computed sums are exact in f32


def _params(dtype=jnp.float32):
    return {
        "conv": {"kernel": jnp.full((3, 3, 2, 4), -1.0, dtype)},
        "bn1": {"scale": jnp.array([0.5, -2.0, 0.0, 1.0], dtype),
                "bias": jnp.array([1.0, -2.0, 3.0, 0.0], dtype)},
        "bn2": {"scale": jnp.array([-0.25, 4.0], dtype),
                "bias": jnp.array([5.0, -6.0], dtype)},
        "head": {"kernel": -jnp.ones((2, 3), dtype), "bias": jnp.ones(3, dtype)},
    }


def _grads(dtype=jnp.float32):
    return jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.5, dtype), _params())


def test_exact_update_on_scales_only():
    params, grads = _params(), _grads()
    tx = wormjax.sparsity_penalty(wormjax.batchnorm_selector(), S)
    out, _ = tx.update(grads, tx.init(params), params)
    # 0.5 + 0.25 * sign(scale); sign(0) = 0 leaves the third channel alone.
    np.testing.assert_array_equal(out["bn1"]["scale"], [0.75, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(out["bn2"]["scale"], [0.25, 0.75])
    # Bias companions, conv and dense leaves pass through untouched.
    for name, leaf in (("bn1", "bias"), ("bn2", "bias"), ("conv", "kernel"),
                       ("head", "kernel"), ("head", "bias")):
        np.testing.assert_array_equal(out[name][leaf], grads[name][leaf])


def test_custom_selector_and_default_selector():
    params, grads = _params(), _grads()
    tx = wormjax.sparsity_penalty(wormjax.path_selector(r"^head/kernel$"), S)
    out, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(out["head"]["kernel"], np.full((2, 3), 0.25))
    np.testing.assert_array_equal(out["bn1"]["scale"], grads["bn1"]["scale"])
    tx = wormjax.sparsity_penalty(strength=S)  # batchnorm_selector by default
    out, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(out["bn2"]["scale"], [0.25, 0.75])


def test_strength_zero_is_the_identity():
    params, grads = _params(), _grads()
    tx = wormjax.sparsity_penalty(strength=0.0)
    out, _ = tx.update(grads, tx.init(params), params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, grads)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_preserved(dtype):
    params, grads = _params(dtype), _grads(dtype)
    tx = wormjax.sparsity_penalty(strength=S)
    out, _ = tx.update(grads, tx.init(params), params)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(grads)):
        assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(out["bn1"]["scale"], np.float32),
                                  [0.75, 0.25, 0.5, 0.75])


def test_mixed_dtypes_follow_the_update():
    params = _params(jnp.float32)
    grads = _grads(jnp.bfloat16)
    tx = wormjax.sparsity_penalty(strength=S)
    out, _ = tx.update(grads, tx.init(params), params)
    assert out["bn1"]["scale"].dtype == jnp.bfloat16


@pytest.mark.parametrize("strength", [-1e-4, float("nan"), float("inf"), "a", True])
def test_bad_strength_rejected(strength):
    with pytest.raises(ValueError, match="sparsity strength"):
        wormjax.sparsity_penalty(strength=strength)


def test_bad_selector_and_missing_params_rejected():
    with pytest.raises(ValueError, match="ParamSelector"):
        wormjax.sparsity_penalty("bn", 1e-4)
    tx = wormjax.sparsity_penalty(strength=S)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(_grads(), tx.init(_params()))
    with pytest.raises(ValueError, match="BatchNorm"):
        tx.init({"dense": {"kernel": jnp.ones(3)}})


def _keep():
    # bn1 = [T F F T], bn2 = [F T]
    return wormjax.WormTruncationState(jnp.array([True, False, False, True, False, True]),
                                       jnp.float32(0.5), jnp.bool_(True))


def test_before_truncation_the_penalty_is_truncated_too():
    params, grads = _params(), _grads()
    first = optax.chain(wormjax.sparsity_penalty(strength=S), wormjax.worm_truncation())
    out, _ = first.update(grads, first.init(params), params, truncation=_keep())
    # pruned channels: (0.5 + 0.25 sign) * 0.5; kept: 0.5 + 0.25 sign
    np.testing.assert_array_equal(out["bn1"]["scale"], [0.75, 0.125, 0.25, 0.75])
    np.testing.assert_array_equal(out["bn2"]["scale"], [0.125, 0.75])
    # the one-line other order: truncation scales only the loss gradient
    second = optax.chain(wormjax.worm_truncation(), wormjax.sparsity_penalty(strength=S))
    out, _ = second.update(grads, second.init(params), params, truncation=_keep())
    np.testing.assert_array_equal(out["bn1"]["scale"], [0.75, 0.0, 0.25, 0.75])
    np.testing.assert_array_equal(out["bn2"]["scale"], [0.0, 0.75])


def test_before_momentum_and_weight_decay_like_torch_sgd():
    params, grads = _params(), _grads()
    tx = optax.chain(wormjax.sparsity_penalty(strength=S),
                     optax.add_decayed_weights(0.5), optax.sgd(1.0, momentum=0.9))
    state = tx.init(params)
    upd, state = tx.update(grads, state, params)
    # torch: d = grad + s*sign(w) + wd*w; buf = d; step -lr*buf
    expected = -(0.5 + S * np.sign(params["bn1"]["scale"]) + 0.5 * params["bn1"]["scale"])
    np.testing.assert_allclose(upd["bn1"]["scale"], expected, rtol=1e-6)
    upd, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(upd["bn1"]["scale"], 1.9 * expected, rtol=1e-6)


def test_no_recompilation_and_unknown_extra_args_ignored():
    params, grads = _params(), _grads()
    tx = optax.chain(wormjax.sparsity_penalty(strength=S), wormjax.worm_truncation(),
                     optax.sgd(0.1, momentum=0.9))
    traces = []

    @jax.jit
    def step(params, opt_state, truncation):
        traces.append(1)
        updates, opt_state = tx.update(grads, opt_state, params, truncation=truncation,
                                       something_else=3)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for ratio in (1.0, 0.5, 3e-3):
        trunc = _keep()._replace(ratio=jnp.float32(ratio))
        params, opt_state = step(params, opt_state, trunc)
    assert len(traces) == 1


def test_inside_multisteps():
    params, grads = _params(), _grads()
    inner = optax.chain(wormjax.sparsity_penalty(strength=S), optax.sgd(1.0))
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(params)
    upd, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(upd["bn1"]["scale"], jnp.zeros(4))
    upd, state = tx.update(grads, state, params)  # the mean of two steps is applied
    np.testing.assert_allclose(upd["bn1"]["scale"], [-0.75, -0.25, -0.5, -0.75])


def test_state_is_stable_under_lax_cond():
    params, grads = _params(), _grads()
    inner = optax.chain(wormjax.sparsity_penalty(strength=S), optax.sgd(0.1, 0.9))

    def branch(flag):
        return jax.lax.cond(flag, lambda s: inner.update(grads, s, params)[1],
                            lambda s: s, inner.init(params))

    jax.tree_util.tree_map(lambda a, b: None, branch(True), branch(False))


def test_inject_hyperparams_optimizer_after_it():
    params, grads = _params(), _grads()
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    tx = optax.chain(wormjax.sparsity_penalty(strength=S), sgd)
    state = tx.init(params)
    state[1].hyperparams["learning_rate"] = jnp.asarray(2.0)
    upd, _ = jax.jit(lambda s: tx.update(grads, s, params))(state)
    np.testing.assert_array_equal(upd["bn1"]["scale"], [-1.5, -0.5, -1.0, -1.5])


def test_readme_recipe_snippet_runs():
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "README.md")) as f:
        text = f.read()
    section = text.split("## Early-Bird's own recipe", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the Early-Bird recipe section has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    # the penalty pulled the BN scales towards zero, more than training alone does
    assert namespace["shrunk"]
