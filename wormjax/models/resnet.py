"""ResNet-18: the CIFAR variant (3x3 stem) and torchvision's ``resnet18``.

Module names follow torchvision: stem ``conv1``/``bn1``, blocks ``layer{s}_{b}`` holding
``conv1``/``bn1``/``conv2``/``bn2`` and, where the shape changes, ``shortcut_conv``/
``shortcut_bn`` (torchvision's ``downsample.0``/``downsample.1``), head ``fc``.

``channels`` format: a tuple with one channel count per BatchNorm layer, in definition
order, i.e. in the order ``bn_layout`` lists them (20 entries)::

    (bn1,                                       # stem
     layer1_0.bn1, layer1_0.bn2, layer1_1.bn1, layer1_1.bn2,
     layer2_0.bn1, layer2_0.bn2, layer2_0.shortcut_bn, layer2_1.bn1, layer2_1.bn2,
     ... same for layer3 and layer4)

A block's ``bn1`` (its inner width) is free. The tensors a residual addition sums must
have the same channels, so the counts in each of ``residual_groups()`` must be equal:
the stem with layer1's block outputs, and per later stage the first block's ``bn2`` and
``shortcut_bn`` with the second block's ``bn2``. Structured pruning shares one channel
mask per group.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wormjax.models import common

# (width at multiplier 1, stride of the stage's first block); two BasicBlocks per stage.
_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
_BLOCKS_PER_STAGE = 2
_STEM_WIDTH = 64


def _block_specs() -> list[tuple[str, int, int, bool]]:
    """(name, base width, stride, has projection shortcut) for each block, in order."""
    specs, in_width = [], _STEM_WIDTH
    for stage, (base, stride) in enumerate(_STAGES, start=1):
        for block in range(_BLOCKS_PER_STAGE):
            block_stride = stride if block == 0 else 1
            # Decided on the unpruned architecture so pruning never changes the
            # parameter tree.
            specs.append(
                (
                    f"layer{stage}_{block}",
                    base,
                    block_stride,
                    block_stride != 1 or in_width != base,
                )
            )
            in_width = base
    return specs


def base_bn_channels() -> tuple[int, ...]:
    """Every BatchNorm's channel count at width 1, in ``channels`` order (4,800)."""
    counts = [_STEM_WIDTH]
    for _, base, _, shortcut in _block_specs():
        counts += [base, base] + ([base] if shortcut else [])
    return tuple(counts)


def bn_paths() -> list[tuple[str, ...]]:
    """BatchNorm paths (relative to 'params') in definition (``channels``) order."""
    paths = [("bn1",)]
    for name, _, _, shortcut in _block_specs():
        paths += [(name, "bn1"), (name, "bn2")] + (
            [(name, "shortcut_bn")] if shortcut else []
        )
    return paths


def residual_groups() -> list[list[tuple[str, ...]]]:
    """BatchNorms summed by residual additions; each group shares one channel set.

    Returns:
      One list per stage: stage 1 is the stem ``bn1`` plus layer1's block ``bn2``s;
      later stages are the first block's ``bn2`` and ``shortcut_bn`` plus the next
      block's ``bn2``.
    """
    groups = [[("bn1",)]]
    for name, _, _, shortcut in _block_specs():
        if shortcut:
            groups.append([(name, "shortcut_bn")])
        groups[-1].append((name, "bn2"))
    order = bn_paths()
    return [sorted(g, key=order.index) for g in groups]


def _check_residual_groups(chans: tuple[int, ...], model_name: str) -> None:
    """Raises ValueError if a residual group's channel counts differ."""
    index = {path: i for i, path in enumerate(bn_paths())}
    for group in residual_groups():
        counts = {common.path_str(p): chans[index[p]] for p in group}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"{model_name}: BatchNorms summed by residual additions need equal "
                f"channel counts, got {counts}"
            )


def _conv(features: int, kernel: int, stride: int, pad: int, dtype: Any,
          name: str) -> nn.Conv:
    """A bias-free square conv with torch's initialisation and padding."""
    # Explicit symmetric padding: 'SAME' pads stride-2 convs on one side only,
    # unlike torch.
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                   kernel_init=common.conv_kernel_init, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity or 1x1-conv+BN shortcut."""

    mid_channels: int
    out_channels: int
    stride: int
    projection: bool
    dtype: Any = jnp.float32
    bn_scale_init: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Returns relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

        def conv(features, kernel, stride, pad, name):
            return _conv(features, kernel, stride, pad, self.dtype, name)

        def bn(name):
            return common.batch_norm(train, name, self.dtype, self.bn_scale_init)

        y = conv(self.mid_channels, 3, self.stride, 1, "conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.out_channels, 3, 1, 1, "conv2")(y)
        y = bn("bn2")(y)
        if self.projection:
            shortcut = conv(self.out_channels, 1, self.stride, 0, "shortcut_conv")(x)
            shortcut = bn("shortcut_bn")(shortcut)
        else:
            shortcut = x
        return nn.relu(y + shortcut)


class _ResNet18(common.ChannelsCNN):
    """ResNet-18 body shared by the CIFAR and ImageNet-stem variants."""

    imagenet_stem: ClassVar[bool] = False
    head_name: ClassVar[str] = "fc"
    sample_input_shape: ClassVar[tuple] = (1, 32, 32, 3)

    def bn_channels(self) -> tuple[int, ...]:
        """Channel count of every BatchNorm actually built, in ``channels`` order."""
        name = type(self).__name__
        chans = common.resolve_channels(
            base_bn_channels(), self.width, self.channels, name
        )
        _check_residual_groups(chans, name)
        return chans

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
        """Returns float32 logits (B, num_classes) for images (B, H, W, 3)."""
        chans = iter(self.bn_channels())
        x = jnp.asarray(x_BHWC, self.dtype)
        kernel, stride, pad = (7, 2, 3) if self.imagenet_stem else (3, 1, 1)
        x = _conv(next(chans), kernel, stride, pad, self.dtype, "conv1")(x)
        x = nn.relu(common.batch_norm(train, "bn1", self.dtype, self.bn_scale_init)(x))
        if self.imagenet_stem:
            # Padding with -inf, as torch's MaxPool2d(3, 2, padding=1) does.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name, _, block_stride, projection in _block_specs():
            mid, out = next(chans), next(chans)
            if projection:
                next(chans)  # shortcut_bn, equal to `out` (checked in bn_channels).
            x = BasicBlock(mid, out, block_stride, projection, self.dtype,
                           bn_scale_init=self.bn_scale_init, name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=self.head_name)(x)
        return jnp.asarray(x, jnp.float32)


class CifarResNet18(_ResNet18):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max pool, BasicBlocks [2, 2, 2, 2].

    Attributes:
      num_classes: output classes.
      width: channel multiplier for every conv.
      channels: 20 per-BatchNorm channel counts overriding ``width`` (see module
        docstring).
      dtype: computation dtype; logits are returned in float32.
    """


class TorchvisionResNet18(_ResNet18):
    """torchvision's ``resnet18``: 7x7 stride-2 stem and 3x3 stride-2 max pool.

    Attributes:
      num_classes: output classes (1000 for the ImageNet head).
      width: channel multiplier for every conv.
      channels: 20 per-BatchNorm channel counts overriding ``width`` (see module
        docstring).
      dtype: computation dtype; logits are returned in float32.
    """

    num_classes: int = 1000

    imagenet_stem: ClassVar[bool] = True
    sample_input_shape: ClassVar[tuple] = (1, 224, 224, 3)


def bn_layout(model: nn.Module, input_shape: Sequence[int] | None = None):
    """BatchNorm layers of a ResNet in definition order; see ``common.bn_layout``."""
    return common.bn_layout(model, input_shape)
