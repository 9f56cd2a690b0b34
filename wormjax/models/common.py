"""Shared CNN pieces: BatchNorm factory, width scaling, adaptive pooling, BN layout.

Naming contract (other code selects parameters by path): every BatchNorm module's name
contains ``bn`` and no other module name does, so ``BN_SCALE_PATTERN`` matches exactly
the BatchNorm scales. Module names are also chosen so that sorting the paths, plainly
(what ``jax.tree_util`` does with dicts) or naturally, gives definition order.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wormjax.selectors import BATCHNORM_SCALE_PATTERN
from wormjax.variables import path_str

# Matches the '/'-joined path of a BatchNorm scale, with or without 'params/' first:
# the selectors' name pattern, defined once there.
BN_SCALE_PATTERN = BATCHNORM_SCALE_PATTERN
_BN_SCALE_RE = re.compile(BN_SCALE_PATTERN)

# PyTorch's conv initialisation (kaiming_normal_, fan_out, relu) as used by torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


_NHWC = ("NHWC", "HWIO", "NHWC")


def small_map_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                   precision=None, preferred_element_type=None, **kwargs):
    """``lax.conv_general_dilated``, with 3x3 convs over maps below 3x3 as a matmul.

    XLA's CPU convolution takes a slow path when the map is smaller than the
    kernel: on CIFAR VGG-11's two 512-channel convs over the 2x2 map it ran at
    about 2% of the machine's matmul rate (benchmarks/bench_conv_layers.py).
    The same conv as nine shifted slices of the zero-padded input and one
    matmul (im2col) is exact and runs near the matmul rate. Every other conv,
    and every conv off the CPU, goes to XLA unchanged. Pass it to ``nn.Conv``
    as ``conv_general_dilated``; the parameter tree does not change.
    """
    dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    plain = (jax.default_backend() == "cpu" and lhs.ndim == 4
             and max(lhs.shape[1:3]) < 3 and tuple(rhs.shape[:2]) == (3, 3)
             and tuple(window_strides) == (1, 1)
             and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
             and all(d in (None, 1) for d in tuple(lhs_dilation or ())
                     + tuple(rhs_dilation or ()))
             and feature_group_count == 1 and dimension_numbers == dims)
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs)
    b, h, w, c = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches_BHWK = jnp.concatenate(
        [padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return jnp.matmul(patches_BHWK, rhs.reshape(9 * c, rhs.shape[-1]),
                      precision=precision, preferred_element_type=preferred_element_type)


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """2x2 max pool with stride 2 and no padding, written as a reshape and a max.

    Gives the same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))`` (an odd
    last row or column is dropped, as there). The difference is the gradient's
    cost: XLA:CPU differentiates ``reduce_window`` through an index computation and
    a scatter, which took about a third of CIFAR VGG-11's non-conv time; the
    gradient of this form is one elementwise select. A window with a single
    maximum gets the same gradient either way. A window whose maximum is tied
    splits the gradient equally among the tied entries, where ``reduce_window``
    gives all of it to one; behind a ReLU such ties are zeros, whose gradient the
    ReLU discards in both cases.
    """
    b, h, w, c = x_BHWC.shape
    x = x_BHWC[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def scaled_width(channels: int, width: float) -> int:
    """Scales a layer's channel count by the width multiplier, never below one channel.

    Args:
      channels: the channel count at width 1.
      width: the multiplier.

    Returns:
      ``max(1, int(round(channels * width)))``.
    """
    return max(1, int(round(channels * width)))


def resolve_channels(
    base: Sequence[int], width: float, channels: Sequence[int] | None, model_name: str
) -> tuple[int, ...]:
    """Per-BatchNorm channel counts: ``channels`` if given, else ``base`` scaled.

    Args:
      base: channel counts at width 1, one per BatchNorm layer in definition order.
      width: the width multiplier, used when ``channels`` is None.
      channels: explicit counts overriding ``width`` (e.g. from structured pruning).
      model_name: used in error messages.

    Returns:
      A tuple of positive ints, one per BatchNorm layer.
    """
    if channels is None:
        if not width > 0:
            raise ValueError(f"{model_name}: width must be > 0, got {width}")
        return tuple(scaled_width(c, width) for c in base)
    channels = tuple(int(c) for c in channels)
    if len(channels) != len(base):
        raise ValueError(
            f"{model_name}: channels must have {len(base)} entries (one per "
            f"BatchNorm layer in definition order), got {len(channels)}"
        )
    if min(channels) < 1:
        raise ValueError(
            f"{model_name}: every channel count must be >= 1, got {channels}"
        )
    return channels


def freeze_channels(module: nn.Module) -> None:
    """Stores a list ``channels`` field as a tuple so the module stays hashable.

    Call from a module's ``__post_init__`` before ``super().__post_init__()``.
    """
    if module.channels is not None and not isinstance(module.channels, tuple):
        # Flax modules are frozen dataclasses; this runs before flax finalises the
        # instance.
        object.__setattr__(module, "channels", tuple(int(c) for c in module.channels))


class ChannelsCNN(nn.Module):
    """The fields every library CNN has, and the ``channels`` freeze they need.

    A subclass adds its own fields after these (and may change a default, e.g.
    ``num_classes = 1000`` for an ImageNet head); ``channels`` (one count per
    BatchNorm) is what structured pruning sets to narrow the model.

    Attributes:
      num_classes: output classes.
      width: channel multiplier, ``max(1, round(c * width))`` per conv.
      channels: explicit per-BatchNorm channel counts overriding ``width``.
      dtype: computation dtype; logits are returned in float32.
      bn_scale_init: initial BatchNorm scale; Early-Bird's code used 0.5.
    """

    num_classes: int = 10
    width: float = 1.0
    channels: Sequence[int] | None = None
    dtype: Any = jnp.float32
    bn_scale_init: float = 1.0

    def __post_init__(self):
        freeze_channels(self)
        super().__post_init__()


def batch_norm(
    train: bool, name: str, dtype: Any, scale_init: float = 1.0
) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (torch momentum 0.1 = flax 0.9, eps 1e-5).

    Args:
      train: whether to use batch statistics and update the running averages.
      name: module name; must contain 'bn' (see the module docstring).
      dtype: computation dtype.
      scale_init: constant initial value of the scale (gamma).

    Returns:
      The BatchNorm module.
    """
    if "bn" not in name:
        raise ValueError(f"BatchNorm names must contain 'bn', got {name!r}")
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        scale_init=nn.initializers.constant(scale_init),
        name=name,
    )


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Averaging weights (out_size, in_size) with PyTorch's adaptive pooling windows."""
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        # torch: start = floor(i * in / out), end = ceil((i + 1) * in / out).
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x_BHWC: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Adaptive average pooling with exactly torch.nn.AdaptiveAvgPool2d's windows.

    Windows may overlap or, when the input is smaller than the output, repeat pixels (a
    1x1 map pooled to 7x7 is replicated), which no fixed-stride pooling reproduces.

    Args:
      x_BHWC: input feature map.
      out_hw: output height and width.

    Returns:
      The pooled map, shape (B, out_h, out_w, C), in the input's dtype.
    """
    _, h, w, _ = x_BHWC.shape
    pool_h = jnp.asarray(_adaptive_pool_matrix(h, out_hw[0]), x_BHWC.dtype)
    pool_w = jnp.asarray(_adaptive_pool_matrix(w, out_hw[1]), x_BHWC.dtype)
    return jnp.einsum("bhwc,ph,qw->bpqc", x_BHWC, pool_h, pool_w)


def is_bn_scale(path: Sequence[str]) -> bool:
    """Whether a parameter path (tuple of names) is a BatchNorm scale."""
    return _BN_SCALE_RE.search(path_str(path)) is not None


def _walk(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    """Yields (path, leaf) in insertion order (jax.tree_util would sort the keys)."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _walk(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def abstract_variables(model: nn.Module, input_shape: Sequence[int] | None = None):
    """Shapes and dtypes of ``model.init``'s variables, without running the model.

    Args:
      model: one of the wormjax CNNs (anything with ``__call__(x, train)``).
      input_shape: input batch shape (B, H, W, C); defaults to
        ``model.sample_input_shape``.

    Returns:
      A pytree of ``jax.ShapeDtypeStruct`` with 'params' and 'batch_stats'.
    """
    shape = tuple(input_shape or model.sample_input_shape)
    return jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32), train=False
        )
    )


def bn_layout(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> list[tuple[tuple[str, ...], int]]:
    """Lists the model's BatchNorm layers in definition order with their channel counts.

    Uses ``jax.eval_shape``, so nothing is computed.

    Args:
      model: one of the wormjax CNNs.
      input_shape: input batch shape (B, H, W, C); defaults to
        ``model.sample_input_shape``.

    Returns:
      ``[(bn_module_path, num_channels), ...]``; each path is relative to the 'params'
      collection, e.g. ``('layer2_0', 'shortcut_bn')``, and its scale lives at
      ``params[path...]['scale']``.
    """
    shape = tuple(input_shape or model.sample_input_shape)
    layout = []

    def init_and_record():
        variables = model.init(
            jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32), train=False
        )
        # Inside the trace the dicts still keep flax's creation order; eval_shape's
        # output would come back key-sorted, so the order is read here.
        for path, leaf in _walk(variables["params"]):
            if is_bn_scale(path):
                layout.append((path[:-1], int(leaf.shape[0])))
        return variables

    jax.eval_shape(init_and_record)
    return layout
