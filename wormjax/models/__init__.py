"""Flax models used by wormjax: VGG-11/16 and ResNet-18 (CIFAR, torchvision), BERT."""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax.numpy as jnp

from wormjax import _validate
from wormjax.models.resnet import CifarResNet18
from wormjax.models.resnet import TorchvisionResNet18
from wormjax.models.vgg import CifarVGG11
from wormjax.models.vgg import CifarVGG16
from wormjax.models.vgg import TorchvisionVGG11BN

CNN_MODELS = {
    "cifar_vgg11": CifarVGG11,
    "cifar_resnet18": CifarResNet18,
    "tv_vgg11_bn": TorchvisionVGG11BN,
    "tv_resnet18": TorchvisionResNet18,
    "cifar_vgg16": CifarVGG16,  # Early-Bird's CIFAR VGG-16: 4,224 BN channels
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def create_cnn(name: str, num_classes: int, width: float = 1.0,
               dtype: str = "float32", channels: Sequence[int] | None = None,
               bn_scale_init: float = 1.0) -> Any:
    """Builds one of the CNNs by name.

    Args:
      name: one of ``CNN_MODELS``.
      num_classes: classifier outputs.
      width: channel multiplier (CPU experiments use narrow widths).
      dtype: compute dtype name; parameters stay float32.
      channels: explicit per-BatchNorm channel counts (structured pruning).
      bn_scale_init: initial value of every BatchNorm scale, > 0 (Early-Bird: 0.5).

    Returns:
      An unbound flax module taking ``(x_BHWC, train)``.
    """
    _validate.one_of("model.name", name, CNN_MODELS)
    _validate.one_of("model.dtype", dtype, DTYPES)
    _validate.at_least("num_classes", num_classes, 1)
    if not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"model.width must be a number > 0, got {width!r}")
    bn_scale_init = check_bn_scale_init(bn_scale_init)
    return CNN_MODELS[name](num_classes=num_classes, width=float(width),
                            dtype=DTYPES[dtype], channels=channels,
                            bn_scale_init=bn_scale_init)


def check_bn_scale_init(value) -> float:
    """Checks ``model.bn_scale_init``: a finite number > 0 (0 silences every channel).

    Args:
      value: the configured initial BatchNorm scale.

    Returns:
      It as a float.
    """
    return _validate.open_interval("model.bn_scale_init", value, 0.0, math.inf)
