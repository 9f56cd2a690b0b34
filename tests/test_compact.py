"""Tests for ``wormjax.surgery``: any Flax CNN's compact network equals the dense
network with the pruned channels silenced, in eval mode and for one SGD step."""

import concurrent.futures
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
import pytest

import wormjax
from wormjax import surgery
from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg
from wormjax.surgery import accounting


class FlaxExampleResNet(nn.Module):
    """flax/examples/imagenet style: ``norm`` partial, conv_proj/norm_proj shortcut."""

    widths: tuple = (4, 6)

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=0.9, epsilon=1e-5)
        x = nn.relu(norm(name="bn_init")(nn.Conv(self.widths[0], (3, 3),
                                                 use_bias=False, name="conv_init")(x)))
        for i, w in enumerate(self.widths):
            for j in range(2):
                residual = x
                stride = (2, 2) if i > 0 and j == 0 else (1, 1)
                y = nn.Conv(w, (3, 3), stride, use_bias=False)(x)
                y = nn.relu(norm()(y))
                y = nn.Conv(w, (3, 3), use_bias=False)(y)
                y = norm(scale_init=nn.initializers.zeros)(y)  # zero-init last BN
                if residual.shape != y.shape:
                    residual = nn.Conv(w, (1, 1), stride, use_bias=False,
                                       name=f"conv_proj_{i}")(residual)
                    residual = norm(name=f"norm_proj_{i}")(residual)
                x = nn.relu(residual + y)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(3)(x)


class ConcatNet(nn.Module):
    """A DenseNet-style concatenation skip."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train)
        x = nn.relu(bn()(nn.Conv(4, (3, 3))(x)))
        y = nn.relu(bn()(nn.Conv(5, (3, 3))(x)))
        x = jnp.concatenate([x, y], axis=-1)
        x = nn.relu(bn()(nn.Conv(6, (1, 1))(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class MobileNetBlock(nn.Module):
    """Depthwise-separable: expand 1x1, depthwise 3x3 (x2 multiplier), project 1x1."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train)
        x = nn.relu(bn()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        x = nn.relu6(bn()(nn.Conv(12, (3, 3), feature_group_count=6,
                                  use_bias=False)(x)))
        x = nn.relu(bn()(nn.Conv(5, (1, 1), use_bias=False)(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class FlattenNet(nn.Module):
    """Conv stack ending in flatten + two dense layers."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train)
        x = nn.relu(bn()(nn.Conv(4, (3, 3))(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(bn()(nn.Conv(5, (3, 3))(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(7)(x))
        return nn.Dense(3)(x)


def _cifar(cls):
    return cls(num_classes=3, width=1 / 16)


MODELS = {
    "vgg11": (functools.partial(_cifar, vgg.CifarVGG11), (2, 16, 16, 3)),
    # 32x32: layer4's maps are 4x4, so its convs are plain XLA convs, not the
    # small-map im2col matmuls (a quarter less to compile than at 16x16), and its
    # train-mode BatchNorm averages over 32 values, not ill-conditioned 1x1 maps.
    "resnet18": (functools.partial(_cifar, resnet.CifarResNet18), (2, 32, 32, 3)),
    "flax_resnet": (FlaxExampleResNet, (2, 8, 8, 3)),
    "concat": (ConcatNet, (2, 8, 8, 3)),
    "mobilenet": (MobileNetBlock, (2, 8, 8, 3)),
    "flatten": (FlattenNet, (2, 8, 8, 3)),
}


def _path(key_path):
    return "/".join(str(k.key) for k in key_path)


def _random_variables(model, shape, seed=0):
    rs = np.random.RandomState(seed)
    x = jnp.asarray(rs.uniform(-1, 1, shape), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))

    def leaf(key_path, s):
        name = key_path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return (rs.standard_normal(s.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        if name == "var":
            return (rs.random_sample(s.shape) + 0.5).astype(np.float32)
        if name == "scale":
            return rs.standard_normal(s.shape).astype(np.float32)
        return (0.1 * rs.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract), x


def _bn_ticket(variables, kind, seed=1):
    """Keep masks over every BatchNorm scale (found by its 'mean' statistic)."""
    rs = np.random.RandomState(seed)
    modules = [_path(p)[:-len("/mean")] for p, _ in
               jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
               if p[-1].key == "mean"]
    ticket = {}
    for i, module in enumerate(sorted(modules)):
        n = variables["params"][module.split("/")[0]]
        for part in module.split("/")[1:]:
            n = n[part]
        n = n["scale"].shape[0]
        keep = rs.random_sample(n) < 0.5
        if kind == "empty":
            keep[:] = False  # the floor keeps one channel per layer
        ticket[f"{module}/scale"] = keep
    return ticket


# Compiling is what these tests spend their time on: each program is compiled once
# per (model or Compact, argument shapes) and shared by the tests that run it, and
# the dense and compact programs of one test compile side by side (XLA releases the
# GIL). (XLA at optimisation level 0 compiles twice as fast but rounds train-mode
# BatchNorm differently enough to break the 1e-3 step tolerance.)
_COMPILED = {}


def _key(owner, fn, args):
    leaves, tree = jax.tree_util.tree_flatten(args)
    return (owner, fn.__name__, tree, tuple((np.shape(a), jnp.result_type(a))
                                            for a in leaves))


def _compile(*programs):
    """Compiles the ``(owner, fn, args)`` programs not compiled yet, concurrently."""
    todo = {_key(*p): jax.jit(p[1]).lower(*p[2]) for p in programs}
    todo = {k: low for k, low in todo.items() if k not in _COMPILED}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        _COMPILED.update(zip(todo, pool.map(lambda low: low.compile(), todo.values())))


def _quick(owner, fn, *args):
    """``fn(*args)``, jit-compiled once per (owner, fn name, argument shapes)."""
    _compile((owner, fn, args))
    return _COMPILED[_key(owner, fn, args)](*args)


def _eval(model, variables, x):
    """Eval logits of a dense model or a ``Compact``."""
    def eval_forward(v, x):
        return model.apply(v, x, train=False)
    return _quick(model, eval_forward, variables, x)


@functools.lru_cache(maxsize=None)
def _built(name, kind="random"):
    """(model, variables, x, ticket, compact), shared by the tests of one model."""
    factory, shape = MODELS[name]
    model = factory()
    variables, x = _random_variables(model, shape)
    ticket = _bn_ticket(variables, kind)
    return model, variables, x, ticket, surgery.compact(model, variables, ticket, x)


def _cut(tree, plan):
    def visit(key_path, leaf):
        for axis, mask in plan.leaf_keep[_path(key_path)].items():
            leaf = jnp.take(leaf, np.flatnonzero(mask), axis=axis)
        return leaf
    return jax.tree_util.tree_map_with_path(visit, tree)


def _eval_and_step_program(model, variables, x):
    """(owner, fn, args) of eval logits and one SGD step: (logits, loss, params, stats)."""
    def eval_and_step(v, x):
        return (model.apply(v, x, train=False),) + _sgd_step_fn(model.apply, v, x)
    return model, eval_and_step, (variables, x)


def _sgd_step_fn(apply, variables, x):
    labels = jnp.arange(x.shape[0]) % 3

    def loss_fn(params):
        logits, updates = apply({"params": params,
                                 "batch_stats": variables["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), \
            updates

    tx = optax.sgd(0.1)
    params = variables["params"]
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    steps, _ = tx.update(grads, tx.init(params), params)
    return loss, optax.apply_updates(params, steps), updates["batch_stats"]


@pytest.mark.parametrize("name,kind", [(n, k) for n in MODELS for k in ("random",)]
                         + [("flax_resnet", "empty"), ("mobilenet", "empty")])
def test_compact_equals_silenced_dense(name, kind):
    model, variables, x, ticket, small = _built(name, kind)
    assert small.num_params < sum(np.size(a) for a in
                                  jax.tree_util.tree_leaves(variables["params"]))
    if kind == "empty":
        assert small.plan.floored
    for path, keep in ticket.items():  # the union rule never drops a kept channel
        assert set(np.flatnonzero(keep)) <= set(
            np.flatnonzero(small.plan.leaf_keep[f"params/{path}"][0]))
        assert small.plan.leaf_keep[f"params/{path}"][0].sum() >= 1
    dense = surgery.silenced(variables, small.plan, ticket)
    programs = (_eval_and_step_program(small, small.variables, x),
                _eval_and_step_program(model, dense, x))
    _compile(*programs)
    (logits_c, loss_c, params_c, stats_c), (logits_d, loss_d, params_d, stats_d) = [
        _COMPILED[_key(*p)](*p[2]) for p in programs]
    np.testing.assert_allclose(logits_c, logits_d, rtol=1e-4, atol=1e-4)
    # Shorter conv sums round differently; train-mode BatchNorm over two 8x8 images
    # amplifies that, hence 1e-3 rather than the eval forward's 1e-4.
    np.testing.assert_allclose(loss_c, loss_d, rtol=1e-3)
    cut = _cut({"params": params_d, "batch_stats": stats_d}, small.plan)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-3,
                                             atol=1e-3),
                           {"params": params_c, "batch_stats": stats_c}, cut)


def test_residual_streams_share_the_union_of_their_masks():
    _, _, _, ticket, small = _built("flax_resnet")
    plan = small.plan
    stream = ["bn_init", "BatchNorm_1", "BatchNorm_3"]  # stage 0 residual stream
    groups = [set(g) for g in plan.groups]
    assert {f"params/{m}/scale" for m in stream} in groups
    union = np.logical_or.reduce([ticket[f"{m}/scale"] for m in stream])
    for m in stream:
        np.testing.assert_array_equal(plan.leaf_keep[f"params/{m}/scale"][0], union)
    # The projection shortcut's BatchNorm is found and coupled with stage 1's stream.
    assert {"params/BatchNorm_5/scale", "params/BatchNorm_7/scale",
            "params/norm_proj_1/scale"} in groups


def test_costs_count_dead_filters_and_input_slices():
    model, variables, x, ticket, small = _built("mobilenet")
    cost = accounting.pruned_cost(model, variables, ticket, x)
    assert cost.params_pruned == small.num_params < cost.params_dense
    assert 0 < cost.macs_pruned < cost.macs_dense
    assert 0 < cost.flops_pruned < cost.flops_dense
    # A full ticket removes nothing.
    full = {p: np.ones_like(m) for p, m in ticket.items()}
    same = accounting.pruned_cost(model, variables, full, x)
    assert same.params_pruned == same.params_dense and same.macs_pruned == same.macs_dense


def test_the_function_form_exports_and_jits():
    _, _, x, _, small = _built("flatten")
    assert small.module is None
    exported = small.export(x, train=False)
    np.testing.assert_allclose(exported.call(small.variables, x),
                               _eval(small, small.variables, x), rtol=1e-6)


class ShuffleNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        b, h, w, c = x.shape
        x = x.reshape(b, h, w, 2, c // 2).transpose(0, 1, 2, 4, 3).reshape(b, h, w, c)
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class CumsumNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        return nn.Dense(3)(jnp.cumsum(x, axis=-1).mean(axis=(1, 2)))


def test_bad_inputs_raise_clear_errors():
    model, variables, x, _, _ = _built("flatten")
    with pytest.raises(ValueError, match="'bn9/scale' names no variable of FlattenNet"):
        surgery.compact(model, variables, {"bn9/scale": np.ones(4, bool)}, x)
    with pytest.raises(ValueError, match="layer 'params/BatchNorm_0' has \\(4,\\)"):
        surgery.compact(model, variables, {"BatchNorm_0/scale": np.ones(5, bool)}, x)
    with pytest.raises(ValueError, match="empty"):
        surgery.compact(model, variables, {}, x)
    for net, op in ((ShuffleNet(), "reshape splits a channel axis"),
                    (CumsumNet(), "no rule for op 'cumsum' at CumsumNet")):
        v, x = _random_variables(net, (1, 4, 4, 3))
        with pytest.raises(surgery.UnsupportedOpError, match=op):
            surgery.compact(net, v, {"BatchNorm_0/scale": np.ones(4, bool)}, x)


class SigmoidNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.sigmoid(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        return nn.Dense(3)(jnp.mean(nn.Conv(5, (1, 1))(x), axis=(1, 2)))


def test_channels_that_are_not_zero_when_silenced_are_kept():
    model = SigmoidNet()
    variables, x = _random_variables(model, (1, 4, 4, 3))
    ticket = {"BatchNorm_0/scale": np.array([True, False, False, True])}
    small = surgery.compact(model, variables, ticket, x)
    assert small.plan.leaf_keep["params/BatchNorm_0/scale"][0].all()
    (path, count, why), = small.plan.pinned
    assert path == "params/BatchNorm_0/scale" and count == 2 and "not zero" in why


class PoolFlattenNet(nn.Module):
    """torchvision VGG's head: adaptive average pool (constant matrices), flatten."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        x = common.adaptive_avg_pool(common.max_pool_2x2(x), (3, 3))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_flatten_after_an_adaptive_pool_prunes_exactly_the_ticket():
    # The pool matrices label the flattened pixels; the dense kernel's rows must
    # follow (pixel, pixel, channel) jointly, not join them into one component.
    model = PoolFlattenNet()
    variables, x = _random_variables(model, (2, 8, 8, 3))
    ticket = {"BatchNorm_0/scale": np.array([True, False, True, False])}
    small = surgery.compact(model, variables, ticket, x)
    assert not small.plan.pinned
    np.testing.assert_array_equal(small.plan.leaf_keep["params/BatchNorm_0/scale"][0],
                                  ticket["BatchNorm_0/scale"])
    assert small.variables["params"]["Dense_0"]["kernel"].shape == (9 * 2, 3)
    dense = surgery.silenced(variables, small.plan, ticket)
    np.testing.assert_allclose(_eval(small, small.variables, x), _eval(model, dense, x),
                               rtol=1e-5, atol=1e-5)


def test_a_generic_compact_saves_and_reloads_with_its_dense_model(tmp_path):
    model, _, x, _, small = _built("flatten")
    path = wormjax.save_compact(tmp_path / "c", small, extra_meta={"epoch": np.int64(2)})
    assert wormjax.compact_io.read_compact_meta(path)["extra"] == {"epoch": 2}
    with pytest.raises(ValueError, match="pass the dense model"):
        wormjax.load_compact(path)
    loaded = wormjax.load_compact(path, model, x)
    assert loaded.module is None and loaded.num_params == small.num_params
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.variables,
                           small.variables)
    np.testing.assert_array_equal(_eval(loaded, loaded.variables, x),
                                  _eval(small, small.variables, x))
    # A library CNN's compact is saved as its narrower class, loadable alone.
    lib = _built("vgg11")[4]
    loaded_net, loaded_v = wormjax.load_compact(
        wormjax.save_compact(tmp_path / "lib", lib))
    assert loaded_net.channels == lib.module.channels
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_v, lib.variables)


class NnxNet(nnx.Module):
    """A small NNX CNN: conv-BN-ReLU twice, global mean, linear head."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.conv2 = nnx.Conv(6, 5, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(5, rngs=rngs)
        self.fc = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(axis=(1, 2)))


def test_an_nnx_module_compacts_to_a_narrower_nnx_module():
    rs = np.random.RandomState(0)
    module = NnxNet(nnx.Rngs(0))
    for bn in (module.bn1, module.bn2):  # signed scales, non-trivial statistics
        n = bn.scale[...].shape[0]
        bn.scale[...] = jnp.asarray(rs.standard_normal(n), jnp.float32)
        bn.bias[...] = jnp.asarray(0.1 * rs.standard_normal(n), jnp.float32)
        bn.mean[...] = jnp.asarray(rs.standard_normal(n), jnp.float32)
        bn.var[...] = jnp.asarray(rs.random_sample(n) + 0.5, jnp.float32)
    x = jnp.asarray(rs.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    ticket = {"bn1/scale": np.array([1, 0, 1, 0, 0, 1], bool),
              "bn2/scale": np.array([0, 0, 0, 0, 0], bool)}  # emptied: the floor
    small, plan = wormjax.compact_nnx(module, ticket, x)
    assert type(small) is NnxNet and plan.floored == ("bn2/scale",)
    # wormjax.compact dispatches an NNX module to the same path.
    again, again_plan = wormjax.compact(module, ticket, x)
    assert again_plan.leaf_keep.keys() == plan.leaf_keep.keys()
    assert again.fc.kernel[...].shape == small.fc.kernel[...].shape
    assert small.conv2.kernel[...].shape == (3, 3, 3, 1)
    assert small.fc.kernel[...].shape == (1, 3)
    # Flax's size attributes describe the cut arrays; the dense module keeps its own.
    assert (small.conv1.out_features, small.bn1.num_features, small.conv2.in_features,
            small.conv2.out_features, small.bn2.num_features, small.fc.in_features,
            small.fc.out_features) == (3, 3, 3, 1, 1, 1, 3)
    assert (module.conv1.out_features, module.bn1.num_features, module.fc.in_features) == (
        6, 6, 5)
    dense = nnx.clone(module)
    for name in ("bn1", "bn2"):  # silence the removed channels
        bn, keep = getattr(dense, name), plan.leaf_keep[f"{name}/scale"][0]
        bn.scale[...] = jnp.where(keep, bn.scale[...], 0)
        bn.bias[...] = jnp.where(keep, bn.bias[...], 0)
    for mode in ("eval", "train"):  # train: batch statistics of the kept channels
        getattr(small, mode)()
        getattr(dense, mode)()
        np.testing.assert_allclose(small(x), dense(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="'bn9/scale' names no variable of NnxNet"):
        wormjax.compact_nnx(module, {"bn9/scale": np.ones(4, bool)}, x)
