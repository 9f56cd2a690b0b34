"""Flax models used by wormjax: CIFAR/torchvision VGG-11 and ResNet-18, BERT."""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from wormjax import _validate
from wormjax.models.resnet import CifarResNet18
from wormjax.models.resnet import TorchvisionResNet18
from wormjax.models.vgg import CifarVGG11
from wormjax.models.vgg import TorchvisionVGG11BN

CNN_MODELS = {
    "cifar_vgg11": CifarVGG11,
    "cifar_resnet18": CifarResNet18,
    "tv_vgg11_bn": TorchvisionVGG11BN,
    "tv_resnet18": TorchvisionResNet18,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def create_cnn(name: str, num_classes: int, width: float = 1.0,
               dtype: str = "float32", channels: Sequence[int] | None = None) -> Any:
    """Builds one of the CNNs by name.

    Args:
      name: one of ``CNN_MODELS``.
      num_classes: classifier outputs.
      width: channel multiplier (CPU experiments use narrow widths).
      dtype: compute dtype name; parameters stay float32.
      channels: explicit per-BatchNorm channel counts (structured pruning).

    Returns:
      An unbound flax module taking ``(x_BHWC, train)``.
    """
    _validate.one_of("model.name", name, CNN_MODELS)
    _validate.one_of("model.dtype", dtype, DTYPES)
    _validate.at_least("num_classes", num_classes, 1)
    if not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"model.width must be a number > 0, got {width!r}")
    return CNN_MODELS[name](num_classes=num_classes, width=float(width),
                            dtype=DTYPES[dtype], channels=channels)
