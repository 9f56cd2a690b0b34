"""Import of torchvision ``vgg11_bn`` / ``resnet18`` state dicts into the Flax CNNs.

The user supplies the weights as a file (``.safetensors``, or a torch pickle such as
``.pth`` when torch is installed). Layout rules: conv OIHW -> HWIO, Linear (out, in) ->
(in, out), BatchNorm weight/bias -> params scale/bias and running_mean/var ->
batch_stats mean/var; ``num_batches_tracked`` is ignored. The CIFAR models accept state
dicts of torch re-implementations that use the same names (``features.N``/``classifier``
for VGG, torchvision's ResNet names); Early-Bird's ``feature.``, ``shortcut.`` and
``linear.`` spellings and a DataParallel ``module.`` prefix are understood too.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import vgg
from wormjax.models import weight_files

_IGNORED_SUFFIX = ".num_batches_tracked"
# Flax leaf name -> torch parameter/buffer name (others, e.g. 'bias', are the same).
_TORCH_LEAF_NAMES = {
    "kernel": "weight",
    "scale": "weight",
    "mean": "running_mean",
    "var": "running_var",
}
# (pattern, replacement) applied to every incoming key, in order.
_KEY_ALIASES = (
    (r"^module\.", ""),
    (r"^feature\.", "features."),
    (r"\.shortcut\.", ".downsample."),
    (r"^linear\.", "fc."),
)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torch state dict from ``.safetensors`` or a torch pickle (``.pth``).

    Args:
      path: the file. Pickles need torch; they are read with ``weights_only=True``. A
        checkpoint dict holding the weights under 'state_dict' or 'model' is unwrapped.

    Returns:
      Parameter name -> numpy array.

    Raises:
      ValueError: the file is unreadable or holds no state dict (naming the file);
        ``weight_files.TorchNotInstalledError`` for a pickle without torch.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

        with weight_files.safetensors_errors(path):
            return dict(load_file(path))
    obj = weight_files.torch_load(
        path, "convert it to .safetensors, which needs only safetensors")
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    import torch  # pylint: disable=g-import-not-at-top - torch_load imported it

    return {
        k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        for k, v in obj.items()
        if isinstance(v, torch.Tensor)
    }


def conv_kernel_from_torch(w_OIHW: np.ndarray) -> np.ndarray:
    """Torch conv weight (out, in, kh, kw) -> Flax kernel (kh, kw, in, out)."""
    return np.transpose(w_OIHW, (2, 3, 1, 0))


def dense_kernel_from_torch(w_OI: np.ndarray) -> np.ndarray:
    """Converts a torch Linear weight (out, in) to a Flax Dense kernel (in, out)."""
    return np.transpose(w_OI)


def dense_kernel_from_torch_chw(
    w_OI: np.ndarray, channels: int, height: int, width: int
) -> np.ndarray:
    """Converts a Linear weight reading a (C, H, W)-flattened map to (H, W, C) order.

    Args:
      w_OI: torch weight (out, C * H * W); column ``c * H * W + h * W + w``.
      channels: C of the flattened map.
      height: H of the flattened map.
      width: W of the flattened map.

    Returns:
      Flax kernel (H * W * C, out); row ``(h * W + w) * C + c``, matching an NHWC
      reshape.
    """
    out = w_OI.shape[0]
    w = w_OI.reshape(out, channels, height, width)
    return np.transpose(w, (2, 3, 1, 0)).reshape(height * width * channels, out)


def _torch_module_name(model: nn.Module, path: tuple[str, ...]) -> str:
    """Torch module name of a Flax module path, e.g. ('layer2_0', 'shortcut_conv')."""
    if isinstance(model, (vgg.CifarVGG11, vgg.TorchvisionVGG11BN)):
        name = path[-1]
        match = re.fullmatch(r"(conv|bn)(\d+)", name)
        if match:
            index = vgg.torch_feature_indices(model.cfg)[int(match.group(2))]
            return f"features.{index + (match.group(1) == 'bn')}"
        if isinstance(model, vgg.CifarVGG11):
            return "classifier"
        return {"fc1": "classifier.0", "fc2": "classifier.3", "fc3": "classifier.6"}[
            name
        ]
    if isinstance(model, resnet._ResNet18):  # pylint: disable=protected-access
        parts = [re.sub(r"^(layer\d)_(\d)$", r"\1.\2", p) for p in path]
        parts = [
            {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(p, p)
            for p in parts
        ]
        return ".".join(parts)
    raise TypeError(f"No torch naming known for {type(model).__name__}")


def _expected_torch_shape(flax_name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The torch shape whose conversion gives a Flax leaf of ``shape``."""
    if flax_name == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if flax_name == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _module_leaves(tree: Mapping[str, Any], prefix=()):
    """Yields (module_path, {leaf_name: leaf}) for every module holding leaves."""
    leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
    if leaves:
        yield prefix, leaves
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _module_leaves(value, prefix + (key,))


def _set(tree: dict, path: Sequence[str], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: Sequence[str]):
    for key in path:
        tree = tree[key]
    return tree


def convert_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, np.ndarray],
    *,
    replace_head: bool = False,
    rng: jax.Array | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Converts a torch state dict into ``{'params', 'batch_stats'}`` for a wormjax CNN.

    Every tensor is shape-checked against ``jax.eval_shape(model.init, ...)``.

    Args:
      model: ``TorchvisionVGG11BN``, ``TorchvisionResNet18``, ``CifarVGG11`` or
        ``CifarResNet18``, configured with the checkpoint's widths.
      state_dict: torch parameter name -> array.
      replace_head: drop the checkpoint's classification head (its keys are ignored) and
        keep the model's freshly initialised head, so ``model.num_classes`` may differ.
      rng: key for that fresh head; defaults to ``PRNGKey(0)``.
      input_shape: shape used to trace the model; defaults to
        ``model.sample_input_shape``.

    Returns:
      Variables ready for ``model.apply``.

    Raises:
      ValueError: listing every missing, unexpected and shape-mismatched key at once.
    """
    aliases = {}
    for key in state_dict:
        new = key
        for pattern, replacement in _KEY_ALIASES:
            new = re.sub(pattern, replacement, new)
        aliases[new] = key
    source = {new: np.asarray(state_dict[old]) for new, old in aliases.items()}

    abstract = common.abstract_variables(model, input_shape)
    head_prefix = _torch_module_name(model, (model.head_name,))
    consumed, missing, mismatched = set(), [], []
    params, batch_stats = {}, {}
    for path, leaves in _module_leaves(abstract["params"]):
        torch_name = _torch_module_name(model, path)
        if replace_head and path == (model.head_name,):
            consumed.update(k for k in source if k.startswith(head_prefix + "."))
            continue
        is_bn = "scale" in leaves
        targets = [
            (("params",) + path + (leaf,), leaf, leaf_abs)
            for leaf, leaf_abs in leaves.items()
        ]
        if is_bn:
            targets += [
                (("batch_stats",) + path + (leaf,), leaf, leaf_abs)
                for leaf, leaf_abs in _get(abstract["batch_stats"], path).items()
            ]
        for flax_path, leaf, leaf_abs in targets:
            key = f"{torch_name}.{_TORCH_LEAF_NAMES.get(leaf, leaf)}"
            if key not in source:
                missing.append(key)
                continue
            consumed.add(key)
            array = source[key]
            want = _expected_torch_shape(leaf, leaf_abs.shape)
            if array.shape != want:
                mismatched.append(
                    f"{aliases[key]}: checkpoint {tuple(array.shape)}, model expects "
                    f"{want} (for {common.path_str(flax_path)})"
                )
                continue
            if leaf == "kernel" and array.ndim == 4:
                array = conv_kernel_from_torch(array)
            elif (
                leaf == "kernel"
                and isinstance(model, vgg.TorchvisionVGG11BN)
                and path == ("fc1",)
            ):
                h, w = model.pooled_hw
                array = dense_kernel_from_torch_chw(array, want[1] // (h * w), h, w)
            elif leaf == "kernel":
                array = dense_kernel_from_torch(array)
            target = params if flax_path[0] == "params" else batch_stats
            _set(target, flax_path[1:], jnp.asarray(array, leaf_abs.dtype))

    unexpected = sorted(
        aliases[k]
        for k in source
        if k not in consumed and not k.endswith(_IGNORED_SUFFIX)
    )
    if missing or unexpected or mismatched:
        lines = [f"Cannot load the state dict into {type(model).__name__}:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                lines.append(f"  {len(items)} {title}: " + "; ".join(items))
        raise ValueError("\n".join(lines))

    if replace_head:
        in_features, _ = abstract["params"][model.head_name]["kernel"].shape
        # The heads are plain nn.Dense layers with default initialisers; initialising
        # only the head avoids compiling the whole model's initialisers.
        head = nn.Dense(model.num_classes, dtype=model.dtype)
        params[model.head_name] = head.init(
            jax.random.PRNGKey(0) if rng is None else rng,
            jnp.zeros((1, in_features), jnp.float32),
        )["params"]
    return {"params": params, "batch_stats": batch_stats}


def load_torchvision_weights(
    model: nn.Module, path: str | os.PathLike, **kwargs
) -> dict[str, Any]:
    """Loads a torchvision checkpoint file into variables for ``model``.

    Args:
      model: the wormjax CNN matching the checkpoint's architecture.
      path: ``.safetensors`` file, or a torch pickle (``.pth``) when torch is installed.
      **kwargs: forwarded to ``convert_state_dict`` (``replace_head``, ``rng``,
        ``input_shape``).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` for ``model.apply``.
    """
    return convert_state_dict(model, load_state_dict(path), **kwargs)
