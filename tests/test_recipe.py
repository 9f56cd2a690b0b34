"""Early-Bird's recipe: schedules, weight-decay masking, sparsity in the chain, VGG-16."""

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wormjax
from conftest import set_fields
from configs import base
from configs import bert_base
from configs import vgg11_eb_official
from configs import vgg16_eb_official
from wormjax.pipeline import experiment
from wormjax import models
from wormjax import selectors
from wormjax import structured
from wormjax.models import common
from wormjax.models import vgg
from wormjax.pipeline import state as state_lib

SELECTOR = wormjax.batchnorm_selector()


def _params():
    return {
        "conv0": {"kernel": jnp.full((3, 3, 2, 4), 0.5)},
        "bn0": {"scale": jnp.array([0.5, -1.0, 0.0, 2.0]),
                "bias": jnp.array([1.0, -2.0, 3.0, 0.5])},
        "fc": {"kernel": jnp.full((4, 3), -1.0), "bias": jnp.ones(3)},
    }


def _optim(**fields):
    return set_fields(base.get_config(), {f"optim.{k}": v for k, v in fields.items()}).optim


def _run(tx, steps=3, grads_scale=1.0):
    """Updates of ``steps`` SGD-like steps with constant gradients (jit, like the run)."""
    params = _params()
    grads = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, grads_scale), params)
    state = tx.init(params)
    inactive = wormjax.WormTruncationState(jnp.ones(4, bool), jnp.float32(1),
                                           jnp.bool_(False))
    step = jax.jit(lambda s, p: tx.update(grads, s, p, truncation=inactive))
    out = []
    for _ in range(steps):
        upd, state = step(state, params)
        params = optax.apply_updates(params, upd)
        out.append(upd)
    return out, state


def _assert_same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# -- the defaults keep today's chains ------------------------------------------


def test_default_sgd_chain_is_todays():
    optim = base.get_config().optim
    tx = state_lib.make_optimizer(optim, SELECTOR, total_steps=100)
    today = optax.chain(wormjax.worm_truncation(SELECTOR),
                        optax.sgd(optim.learning_rate, momentum=optim.momentum))
    got, got_state = _run(tx)
    want, want_state = _run(today)
    _assert_same(got, want)
    assert (jax.tree_util.tree_structure(got_state)
            == jax.tree_util.tree_structure(want_state))


def test_default_adamw_chain_is_todays():
    optim = bert_base.get_config("rte", "worm").optim
    total, warmup = 100, 10  # warmup_fraction 0.1 of 100
    lr = optim.learning_rate
    today = optax.chain(
        wormjax.worm_truncation(SELECTOR), optax.clip_by_global_norm(1.0),
        optax.adamw(optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup),
             optax.linear_schedule(lr, 0.0, total - warmup)], [warmup]),
            weight_decay=optim.weight_decay))
    tx = state_lib.make_optimizer(optim, SELECTOR, total_steps=total)
    got, got_state = _run(tx, steps=12)
    want, want_state = _run(today, steps=12)
    _assert_same(got, want)
    assert (jax.tree_util.tree_structure(got_state)
            == jax.tree_util.tree_structure(want_state))


def test_bert_masking_would_change_its_numbers_so_it_keeps_decaying_all():
    optim = bert_base.get_config("rte", "worm").optim
    assert optim.weight_decay > 0 and optim.decay_norm_and_bias
    masked = set_fields(bert_base.get_config("rte", "worm"),
                        {"optim.decay_norm_and_bias": False}).optim
    a, _ = _run(state_lib.make_optimizer(optim, SELECTOR, total_steps=100), steps=12)
    b, _ = _run(state_lib.make_optimizer(masked, SELECTOR, total_steps=100), steps=12)
    assert not np.array_equal(a[-1]["bn0"]["bias"], b[-1]["bn0"]["bias"])
    np.testing.assert_array_equal(a[-1]["fc"]["kernel"], b[-1]["fc"]["kernel"])


# -- sparsity in the chain -------------------------------------------------------


@pytest.mark.parametrize("placement", ["gradient", "update"])
def test_sparsity_is_added_to_the_raw_gradient_first(placement):
    optim = _optim(sparsity=0.25, momentum=0.0, learning_rate=1.0)
    tx = state_lib.make_optimizer(optim, SELECTOR, placement=placement)
    (upd, *_), _ = _run(tx, steps=1)
    np.testing.assert_array_equal(upd["bn0"]["scale"], [-1.25, -0.75, -1.0, -1.25])
    np.testing.assert_array_equal(upd["bn0"]["bias"], -np.ones(4))
    np.testing.assert_array_equal(upd["fc"]["kernel"], -np.ones((4, 3)))
    keep = jnp.array([True, False, True, False])
    half = wormjax.WormTruncationState(keep, jnp.float32(0.5), jnp.bool_(True))
    params = _params()
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params, truncation=half)
    # the truncation scales the penalised gradient of the pruned channels
    np.testing.assert_array_equal(upd["bn0"]["scale"], [-1.25, -0.375, -1.0, -0.625])


def test_sparsity_zero_leaves_the_penalty_out():
    with_zero = state_lib.make_optimizer(_optim(sparsity=0.0), SELECTOR)
    with_some = state_lib.make_optimizer(_optim(sparsity=1e-4), SELECTOR)
    params = _params()
    assert len(with_zero.init(params)) + 1 == len(with_some.init(params))


# -- weight decay ----------------------------------------------------------------


def test_weight_decay_mask_by_path():
    mask = state_lib.weight_decay_mask(_params())
    assert mask == {"conv0": {"kernel": True}, "bn0": {"scale": False, "bias": False},
                    "fc": {"kernel": True, "bias": False}}
    model = models.create_cnn("cifar_resnet18", 10, 1 / 16)
    leaves = selectors.leaves_with_paths(
        state_lib.weight_decay_mask(common.abstract_variables(model)["params"]))
    decayed = {p for p, on in leaves if on}
    assert decayed and all(p.endswith("/kernel") for p in decayed)
    assert {p for p, on in leaves if not on} == {
        p for p, _ in leaves if p.endswith(("/scale", "/bias"))}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_skips_norm_and_bias_unless_asked(name, decay_all):
    fields = dict(name=name, weight_decay=0.5, momentum=0.0, learning_rate=1.0,
                  decay_norm_and_bias=decay_all, schedule="constant")
    decayed = state_lib.make_optimizer(_optim(**fields), SELECTOR)
    plain = state_lib.make_optimizer(_optim(**dict(fields, weight_decay=0.0)), SELECTOR)
    (a, *_), _ = _run(decayed, steps=1, grads_scale=0.0)
    (b, *_), _ = _run(plain, steps=1, grads_scale=0.0)
    # zero gradients: whatever moves, moves by weight decay alone
    assert np.all(np.asarray(a["conv0"]["kernel"]) < 0)
    np.testing.assert_array_equal(b["conv0"]["kernel"], 0.0)
    for module, leaf in (("bn0", "scale"), ("bn0", "bias"), ("fc", "bias")):
        moved = np.any(np.asarray(a[module][leaf]) != 0)
        assert moved == decay_all, (module, leaf)
    if name == "sgd":  # -lr * wd * w, exactly
        np.testing.assert_array_equal(a["fc"]["kernel"], np.full((4, 3), 0.5))


# -- schedules -------------------------------------------------------------------


def test_step_schedule_values_at_its_boundaries():
    sched = state_lib.learning_rate_schedule(
        _optim(schedule="step", learning_rate=0.1, step_fractions="0.5,0.75"),
        total_steps=200)
    lr = {k: float(sched(jnp.int32(k))) for k in (0, 99, 100, 101, 149, 150, 151, 199)}
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert lr[0] == lr[99] == f32(0.1)
    assert lr[100] == lr[101] == lr[149] == f32(0.1 * 0.1)
    assert lr[150] == lr[151] == lr[199] == f32(0.1 * 0.1 * 0.1)


def test_step_schedule_drives_the_sgd_updates():
    tx = state_lib.make_optimizer(
        _optim(schedule="step", learning_rate=1.0, momentum=0.0, step_fractions="0.5",
               step_factor=0.5), SELECTOR, total_steps=4)
    updates, _ = _run(tx, steps=4)
    # counts 0, 1 at lr 1; counts 2, 3 (= 0.5 * 4 onwards) at lr 0.5
    assert [float(u["fc"]["bias"][0]) for u in updates] == [-1.0, -1.0, -0.5, -0.5]


def test_step_fractions_round_to_steps_and_explicit_schedules():
    sched = state_lib.step_schedule(1.0, (0.5,), 0.1, total_steps=5)  # boundary 2
    assert float(sched(1)) == 1.0 and float(sched(2)) == np.float32(0.1)
    assert state_lib.learning_rate_schedule(_optim(name="adamw", schedule="constant"),
                                            100) == 0.01
    warm = state_lib.learning_rate_schedule(
        _optim(schedule="warmup_linear", warmup_steps=10), 110)
    assert float(warm(0)) == 0.0 and float(warm(10)) == np.float32(0.01)
    assert float(warm(110)) == 0.0
    with pytest.raises(ValueError, match="needs total_steps"):
        state_lib.learning_rate_schedule(_optim(schedule="step"), None)


@pytest.mark.parametrize("field,value,message", [
    ("sparsity", -1e-4, "optim.sparsity"),
    ("sparsity", float("nan"), "optim.sparsity"),
    ("schedule", "cosine", "optim.schedule"),
    ("step_fractions", "0.75,0.5", "strictly increasing"),
    ("step_fractions", "0.5,0.5", "strictly increasing"),
    ("step_fractions", "0,0.5", r"optim.step_fractions entry must be in \(0.0, 1.0\)"),
    ("step_fractions", "0.5,1", r"step_fractions entry"),
    ("step_fractions", "half", "comma-separated"),
    ("step_fractions", "", "empty"),
    ("step_factor", 0.0, "optim.step_factor"),
    ("step_factor", 1.5, "optim.step_factor"),
    ("decay_norm_and_bias", 1, "optim.decay_norm_and_bias"),
])
def test_bad_optim_fields_are_rejected(field, value, message):
    # A fresh ConfigDict: the base config's type lock would refuse some values.
    optim = ml_collections.ConfigDict({**_optim(schedule="step").to_dict(),
                                       field: value})
    with pytest.raises(ValueError, match=message):
        state_lib.validate_optim_config(optim)
    config = base.get_config()
    config.optim = optim
    with pytest.raises(ValueError, match=message):
        experiment.validate_config(config)


@pytest.mark.parametrize("value", [0.0, -0.5, float("inf"), "x"])
def test_bad_bn_scale_init_is_rejected(value):
    config = base.get_config()
    config.model = ml_collections.ConfigDict({**config.model.to_dict(),
                                              "bn_scale_init": value})
    with pytest.raises(ValueError, match="model.bn_scale_init"):
        experiment.validate_config(config)
    with pytest.raises(ValueError, match="model.bn_scale_init"):
        models.create_cnn("cifar_vgg11", 10, bn_scale_init=value)


# -- models ----------------------------------------------------------------------


def test_vgg16_has_earlybirds_4224_bn_channels_at_width_1():
    model = models.create_cnn("cifar_vgg16", 10)
    abstract = common.abstract_variables(model)  # eval_shape: nothing compiled
    layout = SELECTOR(abstract["params"])
    assert layout.num_entries == 4224 and len(layout.entries) == 13
    assert [n for _, n in common.bn_layout(model)] == list(vgg.conv_widths(
        vgg.CIFAR_VGG16_CFG))
    assert abstract["params"]["fc"]["kernel"].shape == (512, 10)
    assert "bias" not in abstract["params"]["conv12"]


@pytest.mark.parametrize("name", sorted(models.CNN_MODELS))
def test_bn_scale_init_on_every_cnn(name):
    model = models.create_cnn(name, 10, 1 / 16, bn_scale_init=0.5)
    shape = (1, 64, 64, 3) if name.startswith("tv_") else (1, 32, 32, 3)
    params = model.init(jax.random.key(0), jnp.zeros(shape), train=False)["params"]
    scales = SELECTOR(params).representative(params)
    assert all(np.all(np.asarray(s) == 0.5) for s in scales)
    default = models.create_cnn(name, 10, 1 / 16)
    same = default.init(jax.random.key(0), jnp.zeros(shape), train=False)["params"]
    # only the scales differ: the rest of the initialisation is untouched
    flat = dict(selectors.leaves_with_paths(params))
    for path, leaf in selectors.leaves_with_paths(same):
        if path.endswith("/scale"):
            np.testing.assert_array_equal(leaf, 1.0)
        else:
            np.testing.assert_array_equal(leaf, flat[path])


def test_tiny_vgg16_forward_and_structured_equivalence():
    model = models.create_cnn("cifar_vgg16", 10, 1 / 16, bn_scale_init=0.5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    rs = np.random.RandomState(0)
    params = jax.tree_util.tree_map(  # signed, spread scales so the mask is nontrivial
        lambda x: jnp.asarray(rs.standard_normal(x.shape), x.dtype), variables["params"])
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    x = jnp.asarray(rs.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    layout = SELECTOR(params)
    keep = wormjax.global_magnitude_mask(layout.representative(params), 0.5)
    keep = jnp.concatenate([jnp.ravel(k) for k in keep])
    compact, compact_vars, info = structured.build_compact(model, variables, layout, keep)
    assert type(compact) is vgg.CifarVGG16 and info["params_compact"] < info[
        "params_dense"]
    silenced = layout.map_masked(params, keep, lambda leaf, k: jnp.where(k, leaf, 0.0))
    want = model.apply({"params": silenced, "batch_stats": variables["batch_stats"]}, x,
                       train=False)
    np.testing.assert_allclose(compact.apply(compact_vars, x, train=False), want,
                               rtol=1e-4, atol=1e-4)


# -- the official configs, end to end ----------------------------------------------


def test_official_configs_hold_the_eb_recipe():
    c = vgg16_eb_official.get_config()
    assert (c.model.name, c.optim.learning_rate, c.optim.schedule) == (
        "cifar_vgg16", 0.1, "step")
    assert (c.optim.sparsity, c.optim.weight_decay, c.model.bn_scale_init) == (
        1e-4, 1e-4, 0.5)
    assert c.optim.decay_norm_and_bias and c.data.augment
    assert c.search.max_epochs + c.retrain.max_epochs == 160  # EB's one schedule
    assert c.search.prune_ratios == "0.3,0.5,0.7"  # EB's three detectors


def test_vgg11_eb_official_runs_end_to_end_on_digits(tmp_path):
    config = set_fields(vgg11_eb_official.get_config(), {
        "data.name": "digits", "model.width": 0.0625, "data.train_limit": 128,
        "data.eval_limit": 64, "optim.batch_size": 32, "optim.eval_batch_size": 64,
        "search.window": 2, "search.max_epochs": 2, "retrain.max_epochs": 1,
        "progress_bar": False, "log_every_steps": 2, "search.prune_ratios": "0.3,0.7"})
    payload = experiment.run_experiment(config, str(tmp_path), print_fn=lambda s: None)
    low, high = payload["runs"]
    assert (low["variant"], high["variant"]) == ("eb_p0.3", "eb_p0.7")
    for run in (low, high):
        assert run["schedule"] == "none" and run["pruning_mode"] == "structured"
    # A compact network per ratio, narrower the more it prunes.
    assert high["params"]["pruned"] < low["params"]["pruned"] < low["params"]["dense"]
