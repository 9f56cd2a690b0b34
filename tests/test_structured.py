"""Tests for structured pruning: the compact model equals the silenced dense model."""

import functools

import jax
import numpy as np
import pytest

from wormjax import masks
from wormjax import selectors
from wormjax import structured
from wormjax.data import images as images_lib
from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg

from conftest import shared_data

ALL_MODELS = (vgg.CifarVGG11, resnet.CifarResNet18, vgg.TorchvisionVGG11BN,
              resnet.TorchvisionResNet18)
TINY = 1 / 16


@functools.lru_cache(maxsize=None)
def _images() -> np.ndarray:
    """Four real CIFAR-10 test images scaled to [-1, 1], or random ones without data."""
    path = shared_data("cifar10", "cifar-10-python.tar.gz")
    if path is None:
        return np.random.RandomState(3).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    ds = images_lib.load_cifar10("test", "local", path, limit=4)
    return (ds.images.astype(np.float32) / 255.0 - 0.5) / 0.5


def _variables(model, seed=0):
    """Random weights at He scale, random BN scales (signed), biases and statistics."""
    rs = np.random.RandomState(seed)

    def param(path, s):
        name = path[-1].key
        if name == "kernel":  # logits of order one, so atol means something
            fan_in = int(np.prod(s.shape[:-1]))
            return (rs.standard_normal(s.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        if name == "scale":
            return rs.standard_normal(s.shape).astype(np.float32)
        return (0.1 * rs.standard_normal(s.shape)).astype(np.float32)

    abstract = common.abstract_variables(model)
    return {"params": jax.tree_util.tree_map_with_path(param, abstract["params"]),
            "batch_stats": jax.tree_util.tree_map_with_path(
                lambda p, s: (rs.random_sample(s.shape) + (0.5 if p[-1].key == "var"
                                                           else -0.5)).astype(np.float32),
                abstract["batch_stats"])}


def _mask(kind, layout, params):
    scales = layout.representative(params)
    n = layout.num_entries
    if kind == "half":
        return np.asarray(masks.flat_magnitude_mask(masks.flat_magnitudes(scales), 0.5))
    if kind == "random":
        return np.random.RandomState(1).random_sample(n) < 0.3
    if kind == "one":  # only the globally largest |scale|: nearly every layer floors
        keep = np.zeros(n, bool)
        keep[int(np.argmax(np.asarray(masks.flat_magnitudes(scales))))] = True
        return keep
    return np.full(n, kind == "all")


def _setup(model_cls, kind, **kwargs):
    model = model_cls(num_classes=10, width=TINY, **kwargs)
    variables = _variables(model)
    layout = selectors.batchnorm_selector()(variables["params"])
    return model, variables, layout, _mask(kind, layout, variables["params"])


def _silenced(variables, info):
    """Dense variables with BN scale and bias zeroed on every channel pruned."""
    kept = dict(zip(info["bn_paths"], info["kept"]))

    def visit(path, leaf):
        names = [k.key for k in path]
        module = "/".join(names[1:-1])
        if names[0] != "params" or module not in kept:
            return leaf
        on = np.zeros(leaf.shape, bool)
        on[kept[module]] = True
        return np.where(on, leaf, 0.0).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(visit, variables)


@functools.lru_cache(maxsize=None)
def _eval_fn(model):
    # One compilation per model config: the dense model is shared across masks.
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _logits(model, variables):
    return np.asarray(_eval_fn(model)(variables, _images()))


@pytest.mark.parametrize(
    "model_cls,kind",
    [(m, k) for m in ALL_MODELS for k in ("half", "one")]
    # A random mask ignores magnitudes, so residual-group members disagree more.
    + [(vgg.CifarVGG11, "random"), (resnet.CifarResNet18, "random")])
def test_compact_equals_dense_with_pruned_channels_silenced(model_cls, kind):
    model, variables, layout, keep = _setup(model_cls, kind)
    compact_model, compact_vars, info = structured.build_compact(
        model, variables, layout, keep)
    assert type(compact_model) is model_cls and compact_model.num_classes == 10
    assert info["channels"] == tuple(len(k) for k in info["kept"])
    assert info["params_compact"] < info["params_dense"]
    assert info["shortcut_rule"] == ("union" if "ResNet" in model_cls.__name__ else None)
    if kind == "one":  # one kept channel in all: every layer sits on the floor
        assert set(info["channels"]) == {1} and info["floored"]
    # Every channel the ticket keeps survives; free layers keep exactly their mask.
    grouped = set()
    if info["shortcut_rule"]:
        grouped = {common.path_str(p) for g in resnet.residual_groups() for p in g}
    for path, kept in zip(info["bn_paths"], info["kept"]):
        own = np.flatnonzero(np.asarray(layout.split(keep)[f"{path}/scale"]))
        assert set(own) <= set(kept)
        if path not in info["floored"] and path not in grouped:
            np.testing.assert_array_equal(kept, own)
    want = _logits(model, _silenced(variables, info))
    np.testing.assert_allclose(_logits(compact_model, compact_vars), want,
                               rtol=1e-4, atol=1e-4)


def test_resnet_shortcut_groups_share_the_union_of_their_masks():
    model, variables, layout, keep = _setup(resnet.CifarResNet18, "half")
    channels, kept = structured.compact_channels(model, layout, keep,
                                                 params=variables["params"])
    by_path = dict(zip([common.path_str(p) for p in resnet.bn_paths()], kept))
    per_bn = {p.removesuffix("/scale"): np.asarray(m)
              for p, m in layout.split(keep).items()}
    for group in resnet.residual_groups():
        names = [common.path_str(p) for p in group]
        union = np.flatnonzero(np.logical_or.reduce([per_bn[n] for n in names]))
        for name in names:
            np.testing.assert_array_equal(by_path[name], union)
    # A block's inner bn1 is free: exactly its own mask.
    np.testing.assert_array_equal(by_path["layer3_1/bn1"],
                                  np.flatnonzero(per_bn["layer3_1/bn1"]))
    resnet.CifarResNet18(channels=channels).bn_channels()  # groups are consistent
    # Rounding up to a multiple of 4 only adds channels, and keeps groups consistent.
    rounded, rounded_kept = structured.compact_channels(
        model, layout, keep, params=variables["params"], channel_multiple=4)
    dense = [n for _, n in common.bn_layout(model)]
    assert all(c % 4 == 0 or c == d for c, d in zip(rounded, dense))
    assert all(set(a) <= set(b) for a, b in zip(kept, rounded_kept))
    resnet.CifarResNet18(channels=rounded).bn_channels()


@pytest.mark.parametrize("model_cls", [vgg.CifarVGG11, resnet.CifarResNet18])
def test_empty_mask_keeps_the_largest_scale_channel_of_every_layer(model_cls):
    model, variables, layout, keep = _setup(model_cls, "none")
    compact_model, compact_vars, info = structured.build_compact(
        model, variables, layout, keep)
    assert set(info["channels"]) == {1} and len(info["floored"]) == len(info["bn_paths"])
    params = variables["params"]
    if model_cls is vgg.CifarVGG11:  # VGG layers are free: own largest |scale|
        assert info["kept"][0][0] == np.argmax(np.abs(params["bn0"]["scale"]))
    else:  # a residual group keeps its channel of largest |scale| in any member
        group = [params["bn1"]["scale"], params["layer1_0"]["bn2"]["scale"],
                 params["layer1_1"]["bn2"]["scale"]]
        assert info["kept"][0][0] == np.argmax(np.max(np.abs(group), axis=0))
    np.testing.assert_allclose(_logits(compact_model, compact_vars),
                               _logits(model, _silenced(variables, info)),
                               rtol=1e-4, atol=1e-4)
    # Without scales the floor takes the lowest indices.
    channels, kept = structured.compact_channels(model, layout, keep, min_channels=3)
    assert set(channels) == {3} and list(kept[0]) == [0, 1, 2]


def test_full_mask_gives_the_identical_model():
    model, variables, layout, keep = _setup(vgg.TorchvisionVGG11BN, "all")
    compact_model, compact_vars, info = structured.build_compact(
        model, variables, layout, keep)
    assert info["channels"] == info["channels_dense"] and not info["floored"]
    assert info["params_compact"] == info["params_dense"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, compact_vars, variables)
    np.testing.assert_array_equal(_logits(compact_model, compact_vars),
                                  _logits(model, variables))


@pytest.mark.parametrize("model_cls", [vgg.CifarVGG11, resnet.CifarResNet18])
def test_parameter_and_flop_counts_drop(model_cls):
    model, variables, layout, keep = _setup(model_cls, "half")
    compact_model, compact_vars, info = structured.build_compact(
        model, variables, layout, keep)
    assert structured.count_params(variables) == info["params_dense"]
    assert structured.count_params(compact_vars) == info["params_compact"]
    shape = (2, 32, 32, 3)
    dense = structured.forward_flops(model, variables, shape)
    compact = structured.forward_flops(compact_model, compact_vars, shape)
    assert 0 < compact < 0.8 * dense
    # The analytic conv/dense count agrees with XLA's within the BN/pooling overhead.
    for m, flops in ((model, dense), (compact_model, compact)):
        assert 0.85 * flops < 2 * structured.conv_dense_macs(m, (1, 32, 32, 3)) <= flops


@pytest.mark.parametrize("model_cls", [resnet.CifarResNet18, vgg.TorchvisionVGG11BN])
def test_save_load_round_trip(model_cls, tmp_path):
    model, variables, layout, keep = _setup(model_cls, "half")
    compact_model, compact_vars, info = structured.build_compact(
        model, variables, layout, keep)
    path = structured.save_compact(tmp_path / "compact", compact_model, compact_vars,
                                   {"ticket_epoch": np.int64(3), "prune_ratio": 0.5})
    loaded_model, loaded_vars = structured.load_compact(path)
    assert type(loaded_model) is model_cls
    assert loaded_model.channels == info["channels"]
    assert loaded_model.width == model.width
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_vars, compact_vars)
    np.testing.assert_array_equal(_logits(loaded_model, loaded_vars),
                                  _logits(compact_model, compact_vars))
    meta = structured.read_compact_meta(path)
    assert meta["extra"] == {"ticket_epoch": 3, "prune_ratio": 0.5}
    with pytest.raises(ValueError):  # never overwritten silently
        structured.save_compact(path, compact_model, compact_vars)


def test_bad_inputs_raise_clear_errors(tmp_path):
    model, variables, layout, keep = _setup(vgg.CifarVGG11, "half")
    n = layout.num_entries
    with pytest.raises(ValueError, match=f"N = {n}"):
        structured.build_compact(model, variables, layout, np.ones(n + 1, bool))
    other = resnet.CifarResNet18(width=TINY)
    with pytest.raises(ValueError, match="does not match CifarResNet18"):
        structured.compact_channels(other, layout, keep)
    with pytest.raises(ValueError, match="does not match CifarVGG11"):
        structured.compact_channels(vgg.CifarVGG11(width=2 * TINY), layout, keep)
    wide = vgg.CifarVGG11(num_classes=10, width=2 * TINY)
    with pytest.raises(ValueError, match="variables do not match"):
        structured.build_compact(model, _variables(wide), layout, keep)
    with pytest.raises(ValueError, match="supports CifarVGG11"):
        structured.compact_channels(resnet.BasicBlock(4, 4, 1, False), layout, keep)
    with pytest.raises(ValueError, match="min_channels"):
        structured.compact_channels(model, layout, keep, min_channels=0)
    with pytest.raises(FileNotFoundError):
        structured.load_compact(tmp_path / "absent")
