"""Representative parameters are chosen once, by path or by structure."""

import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wormjax

# The small fixture below has a LayerNorm "ln" on purpose, which the name
# fallback warns about; the warning itself is tested with the ResNet.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:batchnorm_selector\(\) saw no BatchNorm statistics:UserWarning")


def _cnn_params():
    # Insertion, sorted and natural order all differ here on purpose.
    return {
        "conv0": {"kernel": jnp.ones((3, 3, 3, 2))},
        "bn0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
        "block10": {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
        "block2": {"BatchNorm_0": {"scale": jnp.ones(5), "bias": jnp.zeros(5)}},
        "ln": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "head": {"kernel": jnp.ones((5, 3))},
    }


def test_batchnorm_selector_in_natural_path_order_with_bias_companions():
    layout = wormjax.batchnorm_selector()(_cnn_params())
    assert layout.paths == ("block2/BatchNorm_0/scale", "block10/bn/scale",
                            "bn0/scale")
    assert [e.offset for e in layout.entries] == [0, 5, 8]
    assert layout.num_entries == 10
    assert layout.entries[1].companions == ("block10/bn/bias",)


def test_layout_does_not_depend_on_dict_order_or_jit():
    params = _cnn_params()
    reordered = dict(reversed(list(params.items())))
    through_jit = jax.jit(lambda p: p)(params)
    layouts = {wormjax.batchnorm_selector()(p) for p in
               (params, reordered, through_jit)}
    assert len(layouts) == 1


def test_representative_is_a_list_in_layout_order():
    params = _cnn_params()
    params["block2"]["BatchNorm_0"]["scale"] = jnp.arange(5.0)
    rep = wormjax.batchnorm_selector()(params).representative(params)
    assert [r.shape for r in rep] == [(5,), (3,), (2,)]
    np.testing.assert_array_equal(rep[0], jnp.arange(5.0))


def test_layout_from_shape_structs_matches_arrays():
    params = _cnn_params()
    shapes = jax.eval_shape(lambda: params)
    assert wormjax.batchnorm_selector()(shapes) == wormjax.batchnorm_selector()(params)


def test_attention_selector_query_key_and_optional_value():
    params = {"layer_0": {"attention": {
        "query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
        "key": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
        "value": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
    }}}
    qk = wormjax.attention_selector()(params)
    assert qk.paths == ("layer_0/attention/key/kernel",
                        "layer_0/attention/query/kernel")
    assert qk.num_entries == 32 and all(not e.companions for e in qk.entries)
    qkv = wormjax.attention_selector(include_value=True)(params)
    assert qkv.num_entries == 48


def test_split_round_trip_and_bad_length():
    layout = wormjax.batchnorm_selector()(_cnn_params())
    flat = jnp.arange(10) % 2 == 0
    parts = layout.split(flat)
    np.testing.assert_array_equal(parts["block10/bn/scale"], [False, True, False])
    with pytest.raises(ValueError, match=r"\(10,\)"):
        layout.split(jnp.ones(9, bool))


def test_representative_of_another_model_is_rejected():
    layout = wormjax.batchnorm_selector()(_cnn_params())
    with pytest.raises(ValueError, match="different model"):
        layout.representative({"bn0": {"scale": jnp.ones(2)}})


def test_invalid_pattern_is_rejected():
    with pytest.raises(ValueError, match="invalid selector pattern"):
        wormjax.path_selector("(unclosed")


# A flax-examples ResNet (examples/imagenet/models.py style): BatchNorms made by
# a partial, auto-named BatchNorm_<i>, a "norm_proj" shortcut BatchNorm and the
# block's last BatchNorm zero-initialised.
class _Block(nn.Module):
    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train)
        y = nn.relu(norm()(nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)))
        y = norm(scale_init=nn.initializers.zeros)(
            nn.Conv(self.filters, (3, 3), use_bias=False)(y))
        if x.shape != y.shape:
            x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False,
                        name="conv_proj")(x)
            x = norm(name="norm_proj")(x)
        return nn.relu(x + y)


class _FlaxExamplesResNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv_init")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_init")(x))
        for i, (filters, strides) in enumerate([(4, 1), (8, 2), (16, 2)]):
            x = _Block(filters, strides, name=f"block{i}")(x, train)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def _resnet_variables():
    return _FlaxExamplesResNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


# Natural path order, as every layout.
RESNET_BN = ("block0/BatchNorm_0", "block0/BatchNorm_1",
             "block1/BatchNorm_0", "block1/BatchNorm_1", "block1/norm_proj",
             "block2/BatchNorm_0", "block2/BatchNorm_1", "block2/norm_proj", "bn_init")


def test_batchnorms_found_by_structure_whatever_their_names():
    variables = _resnet_variables()
    with pytest.warns(UserWarning, match="all-equal"):
        layout = wormjax.batchnorm_selector()(variables)
    assert layout.paths == tuple(f"{m}/scale" for m in RESNET_BN)
    assert layout.entries[-2].companions == ("block2/norm_proj/bias",)
    assert layout.num_entries == 4 + 2 * 4 + 3 * 8 + 3 * 16


def test_bound_selector_reads_params_gradients_and_variables_alike():
    variables = _resnet_variables()
    with pytest.warns(UserWarning, match="all-equal"):
        selector = wormjax.batchnorm_selector().bind(variables)
    assert selector.modules == RESNET_BN
    grads = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(p)))(
        variables["params"])
    shapes = jax.eval_shape(lambda: grads)
    layouts = {selector(tree) for tree in
               (variables, variables["params"], grads, shapes)}
    assert len(layouts) == 1
    layout = layouts.pop()
    # The same layout reads and masks a params tree and the full variables.
    rep = layout.representative(variables)
    assert [r.shape for r in rep] == [e.shape for e in layout.entries]
    keep = jnp.arange(layout.num_entries) % 2 == 0
    masked = layout.map_masked(variables, keep, lambda leaf, k: jnp.where(k, leaf, -1.0))
    assert float(masked["params"]["block2"]["norm_proj"]["bias"][1]) == -1.0
    assert float(masked["batch_stats"]["block2"]["norm_proj"]["mean"][1]) == 0.0


def test_unbound_selector_on_bare_params_warns_about_modules_it_leaves_out():
    params = _resnet_variables()["params"]
    with pytest.warns(UserWarning, match=r"left out .*block1/norm_proj.*bind"):
        layout = wormjax.batchnorm_selector()(params)
    assert "block1/norm_proj/scale" not in layout.paths
    assert "bn_init/scale" in layout.paths


def test_tie_warning_names_the_constant_layers_once():
    variables = _resnet_variables()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wormjax.batchnorm_selector()(variables)
    ties = [str(w.message) for w in caught if "all-equal" in str(w.message)]
    assert len(ties) == 1
    assert "block0/BatchNorm_1 (all 0)" in ties[0] and "bn_init (all 1)" in ties[0]
    # A fresh network whose scales all share one value is not warned about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wormjax.batchnorm_selector(include_bias=False)(
            {"bn": {"scale": jnp.ones(3)}, "bn2": {"scale": jnp.ones(2)}})


def test_selector_without_batchnorm_or_statistics_is_rejected():
    variables = _resnet_variables()
    with pytest.raises(ValueError, match="no BatchNorm statistics.*batch_stats"):
        wormjax.batchnorm_selector().bind(variables["params"])
    no_bn = {"params": {"dense": {"kernel": jnp.ones((2, 2))}},
             "batch_stats": {"running": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}}
    with pytest.raises(ValueError, match="no BatchNorm layers.*running"):
        wormjax.batchnorm_selector()(no_bn)
    with pytest.raises(ValueError, match=r"no scale path matches.*\.bind\(variables\)"):
        wormjax.batchnorm_selector()({"norm": {"scale": jnp.ones(2)}})
    bound = wormjax.batchnorm_selector().bind(no_bn | {"params": {"bn": {
        "scale": jnp.ones(2)}}, "batch_stats": {"bn": {"mean": jnp.zeros(2),
                                                        "var": jnp.ones(2)}}})
    with pytest.raises(ValueError, match="bound to a different model"):
        bound({"other": {"scale": jnp.ones(2)}})
    with pytest.raises(ValueError, match="cannot read the leaf at 'a'.*nnx.State"):
        wormjax.batchnorm_selector()({"a": "not an array"})


def test_builtin_cnns_select_the_same_leaves_by_structure_and_by_name():
    from wormjax import models
    for name in models.CNN_MODELS:
        model = models.create_cnn(name, 10, width=0.125)
        variables = jax.eval_shape(lambda m=model: m.init(
            jax.random.key(0), jnp.zeros(m.sample_input_shape), train=False))
        selector = wormjax.batchnorm_selector()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no module left out by name
            by_name = selector(variables["params"])
        assert selector(variables) == by_name, name


def test_bound_selector_truncates_every_batchnorm_of_the_resnet():
    variables = _resnet_variables()
    with pytest.warns(UserWarning, match="all-equal"):
        selector = wormjax.batchnorm_selector().bind(variables)
    layout = selector(variables)
    tx = wormjax.worm_truncation(selector)
    params = variables["params"]
    grads = jax.tree.map(jnp.ones_like, params)
    keep = jnp.zeros(layout.num_entries, bool)  # every channel pruned
    trunc = wormjax.WormTruncationState(keep, jnp.float32(0.5), jnp.bool_(True))
    updates, _ = jax.jit(lambda g, s: tx.update(g, s, truncation=trunc))(
        grads, tx.init(params))
    for path, leaf in wormjax.selectors.leaves_with_paths(updates):
        name = path.rpartition("/")[2]
        expected = 0.5 if path.rpartition("/")[0] in RESNET_BN else 1.0
        if name not in ("scale", "bias"):
            expected = 1.0
        np.testing.assert_array_equal(leaf, expected, err_msg=path)


def test_a_root_batchnorm_module_is_found():
    variables = nn.BatchNorm(use_running_average=True).init(
        jax.random.key(0), jnp.ones((1, 3)))
    layout = wormjax.batchnorm_selector().bind(variables)(variables["params"])
    assert layout.paths == ("scale",) and layout.entries[0].companions == ("bias",)


def test_one_channel_layers_are_not_ties():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wormjax.batchnorm_selector(include_bias=False)(
            {"bn": {"scale": jnp.array([0.3])}, "bn2": {"scale": jnp.array([1.0, 2.0])}})
        wormjax.batchnorm_selector(include_bias=False)(  # fresh, one floored layer
            {"bn": {"scale": jnp.array([1.0])}, "bn2": {"scale": jnp.ones(3)}})
