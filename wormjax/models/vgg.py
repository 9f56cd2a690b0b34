"""VGG with BatchNorm: Early-Bird's CIFAR VGG-11 and VGG-16, torchvision's ``vgg11_bn``.

All share the feature extractor: conv ``conv{i}`` -> BatchNorm ``bn{i}`` -> ReLU for
the i-th conv (i = 0..7; 0..12 for VGG-16), 2x2 max pools in between. ``channels``
overrides the per-conv widths: one entry per conv, which is one per BatchNorm, in
definition order, so structured pruning builds a narrower model whose ``channels[i]``
is the number of kept channels of ``bn{i}``.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wormjax.models import common

# 'M' is a 2x2 max pool; ints are 3x3 conv widths at width 1.
CIFAR_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
TORCHVISION_VGG11_CFG = CIFAR_VGG11_CFG + ("M",)
# Early-Bird's CIFAR VGG-16 (its models/vgg.py, depth 16): 13 convs, 4,224 BN channels.
CIFAR_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                   512, 512, 512, "M", 512, 512, 512)


def conv_widths(cfg: Sequence[int | str]) -> tuple[int, ...]:
    """The conv widths of a VGG config, dropping the pools."""
    return tuple(v for v in cfg if v != "M")


def torch_feature_indices(cfg: Sequence[int | str]) -> list[int]:
    """Index of each conv in torch's ``features`` Sequential (its BN is at index + 1).

    Args:
      cfg: a VGG config such as ``CIFAR_VGG11_CFG``.

    Returns:
      One index per conv: torch has conv, BN, ReLU per conv and one module per pool.
    """
    indices, position = [], 0
    for v in cfg:
        if v == "M":
            position += 1
        else:
            indices.append(position)
            position += 3
    return indices


def _features(
    x: jax.Array,
    cfg,
    chans,
    train: bool,
    dtype,
    use_bias: bool,
    bn_scale_init: float = 1.0,
) -> jax.Array:
    """Runs the conv/BN/ReLU/max-pool stack, creating ``conv{i}`` and ``bn{i}``."""
    min_hw = 2 ** cfg.count("M")
    if min(x.shape[1:3]) < min_hw:
        # A max pool would otherwise shrink the map to zero size and the logits to NaN.
        raise ValueError(
            f"VGG inputs need height and width >= {min_hw}, got shape {x.shape}"
        )
    conv_index = 0
    for v in cfg:
        if v == "M":
            x = common.max_pool_2x2(x)
            continue
        x = nn.Conv(
            chans[conv_index],
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=use_bias,
            dtype=dtype,
            kernel_init=common.conv_kernel_init,
            conv_general_dilated=common.small_map_conv,
            name=f"conv{conv_index}",
        )(x)
        x = common.batch_norm(train, f"bn{conv_index}", dtype, bn_scale_init)(x)
        x = nn.relu(x)
        conv_index += 1
    return x


class _VGG(common.ChannelsCNN):
    """The feature extractor every VGG here shares (``cfg``: its convs and pools)."""

    cfg: ClassVar[tuple] = CIFAR_VGG11_CFG

    def conv_channels(self) -> tuple[int, ...]:
        """Per-conv widths built: ``channels`` or the width-scaled defaults."""
        return common.resolve_channels(
            conv_widths(self.cfg), self.width, self.channels, type(self).__name__
        )

    def features(self, x_BHWC: jax.Array, train: bool, use_bias: bool) -> jax.Array:
        """The conv/BN/ReLU/max-pool stack on ``x_BHWC`` (call inside ``__call__``)."""
        return _features(jnp.asarray(x_BHWC, self.dtype), self.cfg, self.conv_channels(),
                         train, self.dtype, use_bias=use_bias,
                         bn_scale_init=self.bn_scale_init)


class CifarVGG11(_VGG):
    """Early-Bird's CIFAR VGG-11: 8 bias-free convs + BN, 2x2 avg pool, one Dense.

    Attributes:
      num_classes: output classes.
      width: channel multiplier, ``max(1, round(c * width))`` per conv.
      channels: 8 explicit conv widths overriding ``width`` (one per BatchNorm).
      dtype: computation dtype; logits are returned in float32.
      bn_scale_init: initial BatchNorm scale; Early-Bird's code used 0.5.
    """

    head_name: ClassVar[str] = "fc"
    sample_input_shape: ClassVar[tuple] = (1, 32, 32, 3)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
        """Float32 logits (B, num_classes) for images (B, H, W, 3), H and W >= 16."""
        x = self.features(x_BHWC, train, use_bias=False)
        # Early-Bird applies AvgPool2d(2) to the 2x2 map left of a 32x32 input; a global
        # mean is identical there and also accepts other input sizes.
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=self.head_name)(x)
        return jnp.asarray(x, jnp.float32)


class CifarVGG16(CifarVGG11):
    """Early-Bird's CIFAR VGG-16: 13 bias-free convs + BN, 2x2 avg pool, one Dense.

    The layout of :class:`CifarVGG11` with Early-Bird's depth-16 config
    ``[64, 64, M, 128, 128, M, 256 x 3, M, 512 x 3, M, 512 x 3]``: 4,224 BatchNorm
    channels at width 1, ``conv0``..``conv12`` / ``bn0``..``bn12``. Its attributes
    are :class:`CifarVGG11`'s, with 13 ``channels`` (one per BatchNorm).
    """

    cfg: ClassVar[tuple] = CIFAR_VGG16_CFG


class TorchvisionVGG11BN(_VGG):
    """torchvision's ``vgg11_bn``: convs with bias + BN, 7x7 adaptive pool, 3 Dense.

    The 7x7 map is flattened in (H, W, C) order; ``torchvision_import`` permutes the
    first classifier kernel from torch's (C, H, W) order.

    Attributes:
      num_classes: output classes (1000 for the ImageNet head).
      width: channel multiplier for the convs and the 4096-wide classifier.
      channels: 8 explicit conv widths overriding ``width`` (one per BatchNorm); the
        classifier width still follows ``width``.
      dtype: computation dtype; logits are returned in float32.
      dropout_rate: classifier dropout, active when ``train`` (uses the 'dropout' rng).
      bn_scale_init: initial BatchNorm scale (imported weights replace it).
    """

    num_classes: int = 1000
    dropout_rate: float = 0.5

    cfg: ClassVar[tuple] = TORCHVISION_VGG11_CFG
    head_name: ClassVar[str] = "fc3"
    sample_input_shape: ClassVar[tuple] = (1, 224, 224, 3)
    pooled_hw: ClassVar[tuple[int, int]] = (7, 7)

    def hidden_features(self) -> int:
        """Width of the two hidden classifier layers (4096 at width 1)."""
        return common.scaled_width(4096, self.width)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
        """Float32 logits (B, num_classes) for images (B, H, W, 3), H and W >= 32."""
        x = self.features(x_BHWC, train, use_bias=True)
        x = common.adaptive_avg_pool(x, self.pooled_hw)
        x = x.reshape(x.shape[0], -1)
        hidden = self.hidden_features()
        for name in ("fc1", "fc2"):
            x = nn.relu(nn.Dense(hidden, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=self.head_name)(x)
        return jnp.asarray(x, jnp.float32)


def bn_layout(model: nn.Module, input_shape: Sequence[int] | None = None):
    """BatchNorm layers of a VGG model in definition order; see ``common.bn_layout``."""
    return common.bn_layout(model, input_shape)
