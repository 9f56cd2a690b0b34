"""Flax NNX end to end: selectors, worm_truncation in nnx.Optimizer, EB under nnx.jit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wormjax


class NnxNet(nnx.Module):
    """Two conv + BatchNorm stages; the BatchNorms are not named like ``bn``."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=rngs)
        self.norm1 = nnx.BatchNorm(4, rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, (3, 3), use_bias=False, rngs=rngs)
        self.norm2 = nnx.BatchNorm(6, rngs=rngs)
        self.head = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm1(self.conv1(x)))
        x = nnx.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean(axis=(1, 2)))


class LinenNet(nn.Module):
    """The same network in linen, with the same module names."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="norm1")(x))
        x = nn.Conv(6, (3, 3), use_bias=False, name="conv2")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="norm2")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def _data(seed=0, n=16):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, 6, 6, 1)), jax.random.randint(ky, (n,), 0, 3)


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def test_bound_selector_reads_module_state_params_and_pure_gradients():
    model = NnxNet(nnx.Rngs(0))
    selector = wormjax.batchnorm_selector().bind(model)
    assert selector.modules == ("norm1", "norm2")
    x, y = _data()
    grads = nnx.grad(_loss)(model, x, y)
    trees = (model, nnx.state(model), nnx.state(model, nnx.Param), grads,
             nnx.as_pure(grads), nnx.as_pure(nnx.state(model)))
    layouts = {selector(tree) for tree in trees}
    assert len(layouts) == 1
    layout = layouts.pop()
    assert layout.paths == ("norm1/scale", "norm2/scale")
    assert layout.entries[0].companions == ("norm1/bias",)
    # Unbound, the full state is read by structure; params alone cannot be.
    assert wormjax.batchnorm_selector()(nnx.state(model)) == layout
    with pytest.raises(ValueError, match=r"bind\(variables\)"):
        wormjax.batchnorm_selector()(nnx.state(model, nnx.Param))
    with pytest.raises(ValueError, match="no BatchNorm statistics"):
        wormjax.batchnorm_selector().bind(nnx.state(model, nnx.Param))


def test_representative_and_masks_of_nnx_trees():
    model = NnxNet(nnx.Rngs(0))
    layout = wormjax.batchnorm_selector().bind(model)(model)
    rep = layout.representative(nnx.state(model))
    np.testing.assert_array_equal(rep[1], model.norm2.scale[...])
    keep = jnp.arange(layout.num_entries) < 3
    mask = wormjax.ticket_param_mask(layout, nnx.as_pure(nnx.state(model, nnx.Param)),
                                     keep)
    np.testing.assert_array_equal(mask["norm1"]["bias"], [1, 1, 1, 0])
    np.testing.assert_array_equal(mask["conv1"]["kernel"], 1)


def test_truncation_in_nnx_optimizer_scales_exactly_the_selected_entries():
    model = NnxNet(nnx.Rngs(1))
    selector = wormjax.batchnorm_selector().bind(model)
    layout = selector(model)
    optimizer = nnx.Optimizer(
        model, optax.chain(wormjax.worm_truncation(selector), optax.sgd(1.0)),
        wrt=nnx.Param)
    x, y = _data(1)
    grads = nnx.as_pure(nnx.grad(_loss)(model, x, y))
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    keep = jnp.array([True, False, True, False, True, True, False, False, True, False])
    r = 0.25
    optimizer.update(model, nnx.grad(_loss)(model, x, y),
                     truncation=wormjax.WormTruncationState(keep, jnp.float32(r),
                                                            jnp.bool_(True)))
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    masks = layout.split(keep)
    expected_mult = {"norm1": masks["norm1/scale"], "norm2": masks["norm2/scale"]}
    for module, leaves in before.items():
        for name, old in leaves.items():
            mult = 1.0
            if module in expected_mult and name in ("scale", "bias"):
                mult = jnp.where(expected_mult[module], 1.0, r)
            np.testing.assert_allclose(old - after[module][name],
                                       grads[module][name] * mult, rtol=1e-6,
                                       atol=1e-7, err_msg=f"{module}/{name}")


def test_early_bird_state_threads_through_nnx_jit_without_recompiling():
    model = NnxNet(nnx.Rngs(2))
    selector = wormjax.batchnorm_selector().bind(model)
    layout = selector(model)
    search = wormjax.early_bird(prune_ratio=0.5, window=2, schedule="always",
                                truncation_ratio=0.0)
    optimizer = nnx.Optimizer(
        model, optax.chain(wormjax.worm_truncation(selector), optax.sgd(0.5)),
        wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, eb_state, x, y):
        traces.append(None)
        loss, grads = nnx.value_and_grad(_loss)(model, x, y)
        optimizer.update(model, grads, eb_state=eb_state)
        return loss

    x, y = _data(2)
    # Distinct scales, so the first mask is a real half mask, not all ties.
    for norm, key in ((model.norm1, 0), (model.norm2, 1)):
        norm.scale[...] = jax.random.uniform(jax.random.key(key), norm.scale.shape)
    eb_state = search.init(layout.num_entries)
    for _ in range(3):  # epochs
        eb_state = search.update(eb_state, layout.representative(model))
        pruned_scales = [np.asarray(r)[~m] for r, m in zip(
            layout.representative(model), layout.split(eb_state.newest_mask).values())]
        for _ in range(2):
            train_step(model, optimizer, eb_state, x, y)
        # r = 0: the pruned scales did not move during the epoch.
        for old, new, m in zip(pruned_scales, layout.representative(model),
                               layout.split(eb_state.newest_mask).values()):
            np.testing.assert_array_equal(old, np.asarray(new)[~np.asarray(m)])
    # Another mask, flag and r are runtime values: still one trace.
    train_step(model, optimizer, eb_state._replace(
        masks=~eb_state.masks, active=jnp.bool_(False), ratio=jnp.float32(0.5)), x, y)
    assert len(traces) == 1
    assert int(eb_state.epoch) == 3 and not bool(eb_state.newest_mask.all())


def _linen_into_nnx(variables, model):
    """Copies a linen model's variables into the NNX twin (same module names)."""
    pure = {name: dict(leaves) for name, leaves in variables["params"].items()}
    for name, stats in variables["batch_stats"].items():
        pure[name].update(stats)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def test_same_ticket_as_the_equivalent_linen_model():
    x, y = _data(3, n=32)
    search = wormjax.early_bird(prune_ratio=0.5, window=2, schedule="always",
                                truncation_ratio=0.1)

    linen = LinenNet()
    variables = linen.init(jax.random.key(3), x[:1], train=False)
    lin_selector = wormjax.batchnorm_selector().bind(variables)
    lin_layout = lin_selector(variables)
    lin_tx = optax.chain(wormjax.worm_truncation(lin_selector), optax.sgd(0.5))

    model = NnxNet(nnx.Rngs(0))
    _linen_into_nnx(variables, model)
    nnx_selector = wormjax.batchnorm_selector().bind(model)
    assert nnx_selector(model) == lin_layout
    optimizer = nnx.Optimizer(
        model, optax.chain(wormjax.worm_truncation(nnx_selector), optax.sgd(0.5)),
        wrt=nnx.Param)

    @jax.jit
    def linen_step(params, batch_stats, opt_state, eb_state):
        def loss_fn(p):
            logits, upd = linen.apply({"params": p, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
            return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
                    upd["batch_stats"])
        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = lin_tx.update(grads, opt_state, params, eb_state=eb_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    @nnx.jit
    def nnx_step(model, optimizer, eb_state):
        optimizer.update(model, nnx.grad(_loss)(model, x, y), eb_state=eb_state)

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = lin_tx.init(params)
    lin_eb = nnx_eb = search.init(lin_layout.num_entries)
    for _ in range(4):
        lin_eb = search.update(lin_eb, lin_layout.representative(params))
        nnx_eb = search.update(nnx_eb, lin_layout.representative(model))
        np.testing.assert_array_equal(lin_eb.newest_mask, nnx_eb.newest_mask)
        for _ in range(3):
            params, batch_stats, opt_state = linen_step(params, batch_stats,
                                                        opt_state, lin_eb)
            nnx_step(model, optimizer, nnx_eb)
    for a, b in zip(lin_layout.representative(params),
                    lin_layout.representative(model)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not bool(lin_eb.newest_mask.all())  # a real ticket, half pruned
