"""Tests for the Flax CNNs: shapes, BN layout and names, channel overrides, BN modes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg

ALL_MODELS = (
    vgg.CifarVGG11,
    vgg.TorchvisionVGG11BN,
    resnet.CifarResNet18,
    resnet.TorchvisionResNet18,
)
TINY = 1 / 16


def _variables(model, seed=0):
    """Random variables from abstract shapes (compiling RNG initialisers is slow)."""
    rs = np.random.RandomState(seed)
    abstract = common.abstract_variables(model)
    params = jax.tree_util.tree_map(
        lambda s: (0.3 * rs.standard_normal(s.shape)).astype(np.float32),
        abstract["params"],
    )
    stats = jax.tree_util.tree_map(
        lambda s: (0.5 + rs.random_sample(s.shape)).astype(np.float32),
        abstract["batch_stats"],
    )
    return {"params": params, "batch_stats": stats}


def _apply(model, variables, x, train=False, seed=0):
    """Jitted forward; in train mode also returns the updated batch_stats."""
    if train:
        fn = lambda v, x, r: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": r}
        )
    else:
        fn = lambda v, x, r: model.apply(v, x, train=False)
    return jax.jit(fn)(variables, x, jax.random.PRNGKey(seed))


def _images(batch=2, size=32):
    return (
        np.random.RandomState(1)
        .standard_normal((batch, size, size, 3))
        .astype(np.float32)
    )


@pytest.mark.parametrize("model_cls", ALL_MODELS)
def test_output_shape_at_tiny_width(model_cls):
    model = model_cls(num_classes=7, width=TINY)
    x = _images()
    abstract = common.abstract_variables(model, x.shape)
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), abstract)
    assert logits.shape == (2, 7)
    assert logits.dtype == jnp.float32


def test_real_init_and_forward():
    # One real init only: compiling the RNG initialisers dominates this file's runtime.
    model = vgg.CifarVGG11(num_classes=7, width=TINY, bn_scale_init=0.5)
    x = _images()
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(
        jax.random.PRNGKey(0), x
    )
    assert variables["params"]["conv0"]["kernel"].shape == (3, 3, 3, 4)
    np.testing.assert_array_equal(variables["params"]["bn0"]["scale"], np.full(4, 0.5))
    np.testing.assert_array_equal(variables["batch_stats"]["bn7"]["var"], np.ones(32))
    logits = _apply(model, variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize(
    "model_cls,num_layers,num_channels",
    [
        (vgg.CifarVGG11, 8, 2752),
        (vgg.TorchvisionVGG11BN, 8, 2752),
        (resnet.CifarResNet18, 20, 4800),
        (resnet.TorchvisionResNet18, 20, 4800),
    ],
)
def test_bn_channel_count_at_full_width(model_cls, num_layers, num_channels):
    layout = common.bn_layout(model_cls())
    assert len(layout) == num_layers
    assert sum(c for _, c in layout) == num_channels


@pytest.mark.parametrize("model_cls", ALL_MODELS)
def test_bn_regex_selects_exactly_bn_scales_in_definition_order(model_cls):
    abstract = common.abstract_variables(model_cls())
    flat = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
    paths = [tuple(k.key for k in path) for path, _ in flat]
    matched = [p for p in paths if re.search(common.BN_SCALE_PATTERN, "/".join(p))]
    # BatchNorms are exactly the modules that own batch statistics.
    stats = jax.tree_util.tree_flatten_with_path(abstract["batch_stats"])[0]
    bn_modules = {tuple(k.key for k in path)[:-1] for path, _ in stats}
    assert {p[:-1] for p in matched} == bn_modules
    assert all(p[-1] == "scale" for p in matched)
    # Also with the collection prefix, and nothing but BN modules contains 'bn'.
    assert all(
        re.search(common.BN_SCALE_PATTERN, "params/" + "/".join(p)) for p in matched
    )
    assert all(
        "bn" not in name for p in paths if p[:-1] not in bn_modules for name in p
    )
    # jax.tree_util's key-sorted order agrees with definition order.
    layout = common.bn_layout(model_cls())
    assert [p[:-1] for p in matched] == [path for path, _ in layout]


def test_resnet_layout_matches_documented_channels_order():
    model = resnet.CifarResNet18()
    layout = common.bn_layout(model)
    assert [p for p, _ in layout] == resnet.bn_paths()
    assert (
        tuple(c for _, c in layout) == resnet.base_bn_channels() == model.bn_channels()
    )
    assert layout[:3] == [
        (("bn1",), 64),
        (("layer1_0", "bn1"), 64),
        (("layer1_0", "bn2"), 64),
    ]
    assert (("layer2_0", "shortcut_bn"), 128) in layout
    assert ("layer1_0", "shortcut_bn") not in resnet.bn_paths()
    groups = resnet.residual_groups()
    assert groups[0] == [("bn1",), ("layer1_0", "bn2"), ("layer1_1", "bn2")]
    assert groups[1] == [
        ("layer2_0", "bn2"),
        ("layer2_0", "shortcut_bn"),
        ("layer2_1", "bn2"),
    ]


def test_vgg_channels_override_builds_narrower_model():
    channels = (3, 4, 5, 6, 7, 8, 9, 2)
    model = vgg.CifarVGG11(num_classes=5, channels=channels)
    assert [c for _, c in common.bn_layout(model)] == list(channels)
    x = _images()
    variables = _variables(model)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 4)
    assert "bias" not in variables["params"]["conv1"]
    assert variables["params"]["fc"]["kernel"].shape == (2, 5)
    assert _apply(model, variables, x).shape == (2, 5)
    tv = vgg.TorchvisionVGG11BN(num_classes=5, width=TINY, channels=channels)
    tv_abstract = common.abstract_variables(tv)
    assert tv_abstract["params"]["conv7"]["bias"].shape == (2,)
    assert tv_abstract["params"]["fc1"]["kernel"].shape == (2 * 49, 256)


def test_resnet_channels_override_builds_narrower_model():
    base = np.array(resnet.base_bn_channels())
    channels = np.maximum(base // 16, 1)
    index = {p: i for i, p in enumerate(resnet.bn_paths())}
    # Inner widths differ from the block outputs; residual groups stay consistent.
    for name in ("layer1_0", "layer2_1", "layer4_0"):
        channels[index[(name, "bn1")]] = 3
    model = resnet.CifarResNet18(
        num_classes=4, channels=tuple(int(c) for c in channels)
    )
    assert [c for _, c in common.bn_layout(model)] == list(channels)
    x = _images()
    variables = _variables(model)
    block = variables["params"]["layer2_1"]
    assert block["conv1"]["kernel"].shape == (3, 3, 8, 3)
    assert block["conv2"]["kernel"].shape == (3, 3, 3, 8)
    assert _apply(model, variables, x).shape == (2, 4)


def test_list_channels_are_stored_as_tuple_and_module_stays_hashable():
    channels = [3, 4, 5, 6, 7, 8, 9, 2]
    model = vgg.TorchvisionVGG11BN(channels=channels)
    assert model.channels == tuple(channels)
    assert hash(model) == hash(vgg.TorchvisionVGG11BN(channels=tuple(channels)))
    rn = resnet.CifarResNet18(channels=list(resnet.base_bn_channels()))
    assert isinstance(rn.channels, tuple) and hash(rn) is not None


def test_resnet_channels_override_rejects_inconsistent_residual_group():
    channels = list(resnet.base_bn_channels())
    channels[resnet.bn_paths().index(("layer2_0", "shortcut_bn"))] = 100
    with pytest.raises(ValueError, match="shortcut_bn"):
        common.bn_layout(resnet.CifarResNet18(channels=tuple(channels)))
    with pytest.raises(ValueError, match="20 entries"):
        common.bn_layout(resnet.TorchvisionResNet18(channels=(8,) * 19))
    with pytest.raises(ValueError, match="8 entries"):
        common.bn_layout(vgg.CifarVGG11(channels=(8,) * 7))


@pytest.mark.parametrize("model_cls", [vgg.TorchvisionVGG11BN, resnet.CifarResNet18])
def test_train_mode_updates_batch_stats_and_eval_mode_does_not(model_cls):
    model = model_cls(num_classes=3, width=TINY)
    x = _images()
    variables = _variables(model)
    _, updates = _apply(model, variables, x, train=True)
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(np.any(a != b)),
        variables["batch_stats"],
        updates["batch_stats"],
    )
    assert all(jax.tree_util.tree_leaves(changed))
    _, same = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, variables["batch_stats"], same["batch_stats"]
    )


def test_batch_norm_uses_pytorch_momentum_and_epsilon():
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    bn = common.batch_norm(True, "bn", jnp.float32)
    variables = bn.init(jax.random.PRNGKey(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    # PyTorch: running = 0.9 * running + 0.1 * batch (unbiased variance there; flax uses
    # the biased one, which torchvision checkpoints do not depend on).
    np.testing.assert_allclose(
        updates["batch_stats"]["mean"], 0.1 * x.mean(0), rtol=1e-6
    )
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-5)
    with pytest.raises(ValueError, match="bn"):
        common.batch_norm(True, "norm", jnp.float32)


def test_vgg_dropout_only_in_train_mode():
    model = vgg.TorchvisionVGG11BN(num_classes=3, width=TINY)
    x = _images()
    variables = _variables(model)
    np.testing.assert_array_equal(
        _apply(model, variables, x), _apply(model, variables, x)
    )
    train = [_apply(model, variables, x, train=True, seed=s)[0] for s in (0, 1)]
    assert not np.allclose(train[0], train[1])


def test_bfloat16_compute_returns_float32_logits():
    model = vgg.CifarVGG11(width=TINY, dtype=jnp.bfloat16)
    x = _images()
    abstract = common.abstract_variables(model)
    assert abstract["params"]["conv0"]["kernel"].dtype == jnp.float32
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), abstract)
    assert logits.dtype == jnp.float32


def test_adaptive_avg_pool_windows_match_torch_rule():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    pooled = common.adaptive_avg_pool(x, (3, 1))
    # torch windows for 5 -> 3: [0, 2), [1, 4), [3, 5).
    np.testing.assert_allclose(pooled[0, :, 0, 0], [0.5, 2.0, 3.5])
    single = jnp.full((1, 1, 1, 2), 3.0)
    np.testing.assert_array_equal(
        common.adaptive_avg_pool(single, (7, 7)), jnp.full((1, 7, 7, 2), 3.0)
    )


def test_width_scaling_and_validation():
    assert common.scaled_width(64, 1 / 16) == 4
    assert common.scaled_width(64, 0.001) == 1
    assert vgg.CifarVGG11(width=0.5).conv_channels() == (
        32,
        64,
        128,
        128,
        256,
        256,
        256,
        256,
    )
    with pytest.raises(ValueError, match="width"):
        vgg.CifarVGG11(width=0.0).conv_channels()
    small = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=">= 16"):
        common.abstract_variables(vgg.CifarVGG11(), small.shape)
    assert vgg.torch_feature_indices(vgg.TORCHVISION_VGG11_CFG) == [
        0,
        4,
        8,
        11,
        15,
        18,
        22,
        25,
    ]


@pytest.mark.parametrize("hw", [1, 2, 4])
def test_small_map_conv_equals_xla_conv_forward_and_gradients(hw):
    from wormjax.models import common as model_common

    x = jax.random.normal(jax.random.PRNGKey(0), (2, hw, hw, 5))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 7))
    dims = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))

    def with_fn(fn):
        return lambda x, k: fn(x, k, (1, 1), [(1, 1), (1, 1)],
                               dimension_numbers=dims)

    ref, small = with_fn(jax.lax.conv_general_dilated), with_fn(model_common.small_map_conv)
    np.testing.assert_allclose(small(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.PRNGKey(2), ref(x, k).shape)
    grads = [jax.grad(lambda x, k, f=f: jnp.vdot(f(x, k), g), argnums=(0, 1))(x, k)
             for f in (ref, small)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 4), (1, 2, 2, 1)])
def test_max_pool_2x2_equals_flax_max_pool(shape):
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous: no tied maxima
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(common.max_pool_2x2(x), ref(x))
    g = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
    grads = [jax.grad(lambda x, f=f: jnp.vdot(f(x), g))(x)
             for f in (ref, common.max_pool_2x2)]
    np.testing.assert_array_equal(grads[1], grads[0])


def test_max_pool_2x2_splits_the_gradient_of_tied_maxima():
    x = jnp.array([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: common.max_pool_2x2(x).sum())(x)
    np.testing.assert_array_equal(grad.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])
    relu_first = jax.grad(lambda x: common.max_pool_2x2(jax.nn.relu(x)).sum())(
        jnp.zeros((1, 2, 2, 1)))  # all-zero window behind a ReLU: no gradient at all
    np.testing.assert_array_equal(relu_first, jnp.zeros((1, 2, 2, 1)))
