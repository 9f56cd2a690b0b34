"""worm_truncation: exact multipliers and optax interoperability."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import wormjax


def _params(dtype=jnp.float32):
    return {
        "conv": {"kernel": jnp.full((3, 3, 2, 4), 1.0, dtype)},
        "bn1": {"scale": jnp.array([0.1, 0.5, 0.2, 0.9], dtype),
                "bias": jnp.array([1.0, 2.0, 3.0, 4.0], dtype)},
        "bn2": {"scale": jnp.array([0.3, 0.05], dtype),
                "bias": jnp.array([5.0, 6.0], dtype)},
        "head": {"kernel": jnp.ones((2, 3), dtype), "bias": jnp.ones(3, dtype)},
    }


# keep mask of _params at p = 0.5: [F T F T | F F]
KEEP = jnp.array([False, True, False, True, False, False])


def _truncation(active=True, ratio=0.25):
    return wormjax.WormTruncationState(KEEP, jnp.float32(ratio), jnp.bool_(active))


def test_exact_multipliers_on_bn_scale_and_bias():
    params = _params()
    tx = wormjax.worm_truncation(wormjax.batchnorm_selector())
    out, _ = tx.update(params, tx.init(params), truncation=_truncation())
    np.testing.assert_allclose(out["bn1"]["scale"], [0.025, 0.5, 0.05, 0.9])
    np.testing.assert_allclose(out["bn1"]["bias"], [0.25, 2.0, 0.75, 4.0])
    np.testing.assert_allclose(out["bn2"]["scale"], [0.075, 0.0125])
    np.testing.assert_allclose(out["bn2"]["bias"], [1.25, 1.5])
    for name in ("conv", "head"):
        for k, v in params[name].items():
            np.testing.assert_array_equal(out[name][k], v)


def test_bias_untouched_when_not_included():
    params = _params()
    tx = wormjax.worm_truncation(wormjax.batchnorm_selector(include_bias=False))
    out, _ = tx.update(params, tx.init(params), truncation=_truncation())
    np.testing.assert_array_equal(out["bn1"]["bias"], params["bn1"]["bias"])
    np.testing.assert_allclose(out["bn1"]["scale"], [0.025, 0.5, 0.05, 0.9])


def test_multiplier_tree():
    layout = wormjax.batchnorm_selector()(_params())
    mult = wormjax.truncation_multipliers(layout, _params(), _truncation())
    np.testing.assert_allclose(mult["bn1"]["bias"], [0.25, 1, 0.25, 1])
    np.testing.assert_allclose(mult["bn2"]["scale"], [0.25, 0.25])
    assert mult["conv"]["kernel"].shape == () and float(mult["conv"]["kernel"]) == 1


@pytest.mark.parametrize("truncation", [_truncation(active=False),
                                        _truncation(ratio=1.0)])
def test_inactive_and_r_one_are_identities(truncation):
    params = _params()
    tx = wormjax.worm_truncation()
    out, _ = tx.update(params, tx.init(params), truncation=truncation)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, params)


def test_default_state_is_identity_and_remembers_last_truncation():
    params = _params()
    tx = wormjax.worm_truncation()
    state = tx.init(params)
    out, state = tx.update(params, state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out, params)
    _, state = tx.update(params, state, truncation=_truncation())
    out, _ = tx.update(params, state)  # no extra args: the stored one
    np.testing.assert_allclose(out["bn2"]["bias"], [1.25, 1.5])


def test_eb_state_drives_the_transform():
    params = _params()
    search = wormjax.early_bird(window=2, schedule="always", truncation_ratio=0.5)
    layout = wormjax.batchnorm_selector()(params)
    eb = search.update(search.init(layout.num_entries), layout.representative(params))
    tx = wormjax.worm_truncation()
    out, _ = tx.update(params, tx.init(params), eb_state=eb)
    np.testing.assert_allclose(out["bn1"]["bias"], [0.5, 2.0, 1.5, 4.0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_preserved(dtype):
    params = _params(dtype)
    tx = wormjax.worm_truncation()
    out, _ = tx.update(params, tx.init(params), truncation=_truncation())
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(params)):
        assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(out["bn1"]["bias"], np.float32),
                               [0.25, 2.0, 0.75, 4.0])


def test_no_recompilation_when_mask_ratio_or_flag_change():
    params = _params()
    tx = optax.chain(wormjax.worm_truncation(), optax.sgd(0.1, momentum=0.9))
    traces = []

    @jax.jit
    def step(params, opt_state, truncation):
        traces.append(1)
        updates, opt_state = tx.update(params, opt_state, params,
                                       truncation=truncation)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for i, (active, ratio) in enumerate([(False, 1.0), (True, 3e-3), (True, 0.5)]):
        trunc = wormjax.WormTruncationState(jnp.roll(KEEP, i), jnp.float32(ratio),
                                            jnp.bool_(active))
        params, opt_state = step(params, opt_state, trunc)
    assert len(traces) == 1


def test_first_in_chain_scales_raw_gradient_before_momentum():
    params = _params()
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    tx = optax.chain(wormjax.worm_truncation(), optax.sgd(0.1, momentum=0.9))
    plain = optax.sgd(0.1, momentum=0.9)
    state, pstate = tx.init(params), plain.init(params)
    for _ in range(3):
        upd, state = tx.update(grads, state, params, truncation=_truncation())
        pupd, pstate = plain.update(grads, pstate, params)
    # linear in the gradient: the momentum buffer carries the factor too
    np.testing.assert_allclose(upd["bn1"]["scale"],
                               pupd["bn1"]["scale"] * np.array([0.25, 1, 0.25, 1]),
                               rtol=1e-6)
    np.testing.assert_allclose(upd["head"]["kernel"], pupd["head"]["kernel"])


def test_before_adam_is_largely_undone_after_adam_is_not():
    params = _params()
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    before = optax.chain(wormjax.worm_truncation(), optax.adam(1e-2))
    after = optax.chain(optax.adam(1e-2), wormjax.worm_truncation())
    plain = optax.adam(1e-2)
    outs = []
    for tx in (before, after, plain):
        state = tx.init(params)
        for _ in range(5):
            upd, state = tx.update(grads, state, params, truncation=_truncation())
        outs.append(np.asarray(upd["bn1"]["scale"]))
    # Adam normalises a constant factor away (up to eps) when placed after it.
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-4)
    np.testing.assert_allclose(outs[1], outs[2] * np.array([0.25, 1, 0.25, 1]),
                               rtol=1e-6)


def test_inside_multisteps_and_lax_cond_state_is_stable():
    params = _params()
    inner = optax.chain(wormjax.worm_truncation(), optax.sgd(0.1))
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)

    @jax.jit
    def step(state):
        return tx.update(grads, state, params, truncation=_truncation())

    upd, state = step(state)
    np.testing.assert_array_equal(upd["bn1"]["scale"], jnp.zeros(4))
    upd, state = step(state)  # the accumulated step is applied now
    np.testing.assert_allclose(upd["bn1"]["scale"], [-0.025, -0.1, -0.025, -0.1],
                               rtol=1e-6)

    def branch(flag):
        return jax.lax.cond(
            flag,
            lambda s: inner.update(grads, s, params, truncation=_truncation())[1],
            lambda s: s,
            inner.init(params))

    jax.tree_util.tree_map(lambda a, b: None, branch(True), branch(False))


def test_unknown_extra_args_are_ignored():
    params = _params()
    tx = optax.chain(optax.clip_by_global_norm(1.0), wormjax.worm_truncation())
    upd, _ = tx.update(params, tx.init(params), params, truncation=_truncation(),
                       something_else=3)
    assert upd["bn1"]["scale"].shape == (4,)


def test_with_flax_train_state_via_set_truncation():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = nn.Dense(4, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
            return nn.Dense(2)(x)

    model = Net()
    variables = model.init(jax.random.key(0), jnp.ones((2, 3)), train=False)
    tx = optax.chain(wormjax.worm_truncation(), optax.sgd(1.0))
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx)
    keep = jnp.array([True, False, True, False])
    state = state.replace(opt_state=wormjax.set_truncation(
        state.opt_state, wormjax.WormTruncationState(keep, jnp.float32(0.0),
                                                     jnp.bool_(True))))
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads=grads)
    delta = new.params["bn"]["scale"] - state.params["bn"]["scale"]
    np.testing.assert_allclose(delta, [-1.0, 0.0, -1.0, 0.0])
    np.testing.assert_allclose(new.params["bn"]["bias"] - state.params["bn"]["bias"],
                               [-1.0, 0.0, -1.0, 0.0])


def test_set_truncation_errors():
    params = _params()
    with pytest.raises(ValueError, match="no worm_truncation state"):
        wormjax.set_truncation(optax.sgd(0.1).init(params), _truncation())
    state = wormjax.worm_truncation().init(params)
    bad = wormjax.WormTruncationState(jnp.ones(5, bool), jnp.float32(1), jnp.bool_(1))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        wormjax.set_truncation(state, bad)


def test_mask_of_wrong_size_at_update_is_rejected():
    params = _params()
    tx = wormjax.worm_truncation()
    bad = wormjax.WormTruncationState(jnp.ones(7, bool), jnp.float32(1), jnp.bool_(1))
    with pytest.raises(ValueError, match="selected parameters have"):
        tx.update(params, tx.init(params), truncation=bad)


def test_selector_matching_nothing_lists_available_paths():
    with pytest.raises(ValueError) as err:
        wormjax.worm_truncation().init({"dense": {"kernel": jnp.ones(3)}})
    assert "dense/kernel" in str(err.value) and "BatchNorm" in str(err.value)
