"""Tests for torchvision weight import: layouts, key checks, parity with torch."""

import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from wormjax.models import common
from wormjax.models import resnet
from wormjax.models import torchvision_import as tvi
from wormjax.models import vgg

TINY = 1 / 16


# ---------------------------------------------------------------- layout conversions


def test_conv_kernel_oihw_to_hwio_exact_values():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    k = tvi.conv_kernel_from_torch(w)
    assert k.shape == (4, 5, 3, 2)
    for o, i, h, x in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 1), (0, 2, 1, 3)]:
        assert k[h, x, i, o] == w[o, i, h, x]


def test_dense_kernel_transpose():
    w = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)  # (out=2, in=3)
    np.testing.assert_array_equal(
        tvi.dense_kernel_from_torch(w), [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    )


def test_chw_flattened_linear_matches_hwc_flatten():
    rs = np.random.RandomState(0)
    c, h, w, out = 3, 2, 4, 5
    weight = rs.standard_normal((out, c * h * w))
    x_CHW = rs.standard_normal((c, h, w))
    torch_y = weight @ x_CHW.reshape(-1)
    kernel = tvi.dense_kernel_from_torch_chw(weight, c, h, w)
    flax_y = np.transpose(x_CHW, (1, 2, 0)).reshape(-1) @ kernel
    np.testing.assert_allclose(flax_y, torch_y, rtol=1e-12)


def _fake_cifar_vgg_state_dict(model, seed=0, num_classes=None):
    """A torch-named state dict for CifarVGG11 (features.N / classifier), by hand."""
    rs = np.random.RandomState(seed)
    sd, in_c = {}, 3
    for c, idx in zip(model.conv_channels(), vgg.torch_feature_indices(model.cfg)):
        sd[f"features.{idx}.weight"] = rs.standard_normal((c, in_c, 3, 3)).astype(
            np.float32
        )
        for name in ("weight", "bias", "running_mean"):
            sd[f"features.{idx + 1}.{name}"] = rs.standard_normal(c).astype(np.float32)
        sd[f"features.{idx + 1}.running_var"] = rs.uniform(0.5, 1.5, c).astype(
            np.float32
        )
        sd[f"features.{idx + 1}.num_batches_tracked"] = np.array(7, np.int64)
        in_c = c
    n = num_classes or model.num_classes
    sd["classifier.weight"] = rs.standard_normal((n, in_c)).astype(np.float32)
    sd["classifier.bias"] = rs.standard_normal(n).astype(np.float32)
    return sd


def test_bn_and_conv_values_land_in_the_right_place():
    model = vgg.CifarVGG11(num_classes=3, width=TINY)
    sd = _fake_cifar_vgg_state_dict(model)
    variables = tvi.convert_state_dict(model, sd)
    params, stats = variables["params"], variables["batch_stats"]
    # bn3 is torch's features.12 (conv3 at features.11).
    np.testing.assert_array_equal(params["bn3"]["scale"], sd["features.12.weight"])
    np.testing.assert_array_equal(params["bn3"]["bias"], sd["features.12.bias"])
    np.testing.assert_array_equal(stats["bn3"]["mean"], sd["features.12.running_mean"])
    np.testing.assert_array_equal(stats["bn3"]["var"], sd["features.12.running_var"])
    np.testing.assert_array_equal(
        params["conv3"]["kernel"], np.transpose(sd["features.11.weight"], (2, 3, 1, 0))
    )
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["classifier.weight"].T)
    # The result has exactly the model's tree structure and shapes.
    abstract = common.abstract_variables(model)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        abstract
    )
    shapes = lambda tree: [leaf.shape for leaf in jax.tree_util.tree_leaves(tree)]
    assert shapes(variables) == shapes(abstract)


def test_error_lists_missing_unexpected_and_mismatched_keys():
    model = vgg.CifarVGG11(num_classes=3, width=TINY)
    sd = _fake_cifar_vgg_state_dict(model)
    del sd["features.5.running_var"]
    sd["features.99.weight"] = np.zeros(3, np.float32)
    sd["features.8.weight"] = np.zeros((5, 8, 3, 3), np.float32)
    with pytest.raises(ValueError) as info:
        tvi.convert_state_dict(model, sd)
    message = str(info.value)
    assert "1 missing keys: features.5.running_var" in message
    assert "1 unexpected keys: features.99.weight" in message
    assert (
        "features.8.weight: checkpoint (5, 8, 3, 3), model expects (16, 8, 3, 3)"
        in message
    )
    assert "num_batches_tracked" not in message


def test_replace_head_keeps_fresh_head():
    model = vgg.CifarVGG11(num_classes=3, width=TINY)
    sd = _fake_cifar_vgg_state_dict(model, num_classes=10)
    with pytest.raises(ValueError, match="classifier.weight: checkpoint"):
        tvi.convert_state_dict(model, sd)
    variables = tvi.convert_state_dict(model, sd, replace_head=True)
    assert variables["params"]["fc"]["kernel"].shape == (32, 3)
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], np.zeros(3))
    np.testing.assert_array_equal(
        variables["params"]["bn0"]["scale"], sd["features.1.weight"]
    )


def test_aliases_and_safetensors_file(tmp_path):
    model = vgg.CifarVGG11(num_classes=3, width=TINY)
    sd = _fake_cifar_vgg_state_dict(model)
    # Early-Bird's spelling ('feature.') behind a DataParallel prefix.
    renamed = {"module." + k.replace("features.", "feature."): v for k, v in sd.items()}
    path = tmp_path / "vgg.safetensors"
    save_file(renamed, str(path))
    variables = tvi.load_torchvision_weights(model, path)
    np.testing.assert_array_equal(
        variables["params"]["bn0"]["bias"], sd["features.1.bias"]
    )


def test_pickle_without_torch_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        tvi.load_state_dict(tmp_path / "weights.pth")


# ---------------------------------------------------------------- parity with torch


def _torch_modules():
    """Torch re-implementations of torchvision's vgg11_bn / resnet18, same names."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class TorchVGG(tnn.Module):

        def __init__(self, cfg, width, num_classes, imagenet):
            super().__init__()
            layers, in_c = [], 3
            for v in cfg:
                if v == "M":
                    layers.append(tnn.MaxPool2d(2, 2))
                else:
                    c = common.scaled_width(v, width)
                    layers += [
                        tnn.Conv2d(in_c, c, 3, padding=1, bias=imagenet),
                        tnn.BatchNorm2d(c),
                        tnn.ReLU(inplace=True),
                    ]
                    in_c = c
            self.features = tnn.Sequential(*layers)
            self.imagenet = imagenet
            if imagenet:
                hidden = common.scaled_width(4096, width)
                self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
                self.classifier = tnn.Sequential(
                    tnn.Linear(in_c * 49, hidden),
                    tnn.ReLU(True),
                    tnn.Dropout(),
                    tnn.Linear(hidden, hidden),
                    tnn.ReLU(True),
                    tnn.Dropout(),
                    tnn.Linear(hidden, num_classes),
                )
            else:
                self.classifier = tnn.Linear(in_c, num_classes)

        def forward(self, x):
            x = self.features(x)
            x = self.avgpool(x) if self.imagenet else tnn.functional.avg_pool2d(x, 2)
            return self.classifier(torch.flatten(x, 1))

    class TorchBlock(tnn.Module):

        def __init__(self, in_c, c, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_c, c, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.conv2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c)
            self.downsample = None
            if stride != 1 or in_c != c:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(in_c, c, 1, stride, bias=False), tnn.BatchNorm2d(c)
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(
                y + (x if self.downsample is None else self.downsample(x))
            )

    class TorchResNet18(tnn.Module):

        def __init__(self, width, num_classes, imagenet):
            super().__init__()
            w = lambda c: common.scaled_width(c, width)
            self.conv1 = (
                tnn.Conv2d(3, w(64), 7, 2, 3, bias=False)
                if imagenet
                else tnn.Conv2d(3, w(64), 3, 1, 1, bias=False)
            )
            self.bn1 = tnn.BatchNorm2d(w(64))
            self.maxpool = tnn.MaxPool2d(3, 2, 1) if imagenet else tnn.Identity()
            in_c = w(64)
            for stage, (c, stride) in enumerate(
                ((64, 1), (128, 2), (256, 2), (512, 2)), 1
            ):
                blocks = [TorchBlock(in_c, w(c), stride), TorchBlock(w(c), w(c), 1)]
                setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
                in_c = w(c)
            self.avgpool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(in_c, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for stage in range(1, 5):
                x = getattr(self, f"layer{stage}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return torch, TorchVGG, TorchResNet18


def _randomise_bn(torch, module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(3)


def _check_parity(torch, torch_model, flax_model, x_NCHW, tmp_path, fmt="safetensors"):
    _randomise_bn(torch, torch_model)
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x_NCHW)).numpy()
    state = {k: v.detach().contiguous() for k, v in torch_model.state_dict().items()}
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.numpy() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, str(path))
    variables = tvi.load_torchvision_weights(flax_model, path)
    x_NHWC = np.transpose(x_NCHW, (0, 2, 3, 1))
    logits = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
        variables, x_NHWC
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(logits) / scale, expected / scale, atol=1e-4)


@pytest.mark.parametrize("size", [32, 64])
def test_torchvision_vgg11_bn_parity(tmp_path, size):
    torch, torch_vgg, _ = _torch_modules()
    torch.manual_seed(0)
    # 32x32 leaves a 1x1 map that AdaptiveAvgPool2d(7) replicates; 64x64 leaves 2x2,
    # whose 7x7 windows overlap.
    torch_model = torch_vgg(vgg.TORCHVISION_VGG11_CFG, TINY, 6, imagenet=True)
    x = np.random.RandomState(0).standard_normal((2, 3, size, size)).astype(np.float32)
    _check_parity(
        torch,
        torch_model,
        vgg.TorchvisionVGG11BN(num_classes=6, width=TINY),
        x,
        tmp_path,
    )


def test_torchvision_resnet18_parity_from_pth(tmp_path):
    torch, _, torch_resnet = _torch_modules()
    torch.manual_seed(1)
    torch_model = torch_resnet(TINY, 5, imagenet=True)
    assert "layer2.0.downsample.0.weight" in torch_model.state_dict()
    x = np.random.RandomState(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _check_parity(
        torch,
        torch_model,
        resnet.TorchvisionResNet18(num_classes=5, width=TINY),
        x,
        tmp_path,
        fmt="pth",
    )


def test_cifar_models_parity(tmp_path):
    torch, torch_vgg, torch_resnet = _torch_modules()
    torch.manual_seed(2)
    x = np.random.RandomState(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _check_parity(
        torch,
        torch_vgg(vgg.CIFAR_VGG11_CFG, TINY, 4, imagenet=False),
        vgg.CifarVGG11(num_classes=4, width=TINY),
        x,
        tmp_path,
    )
    _check_parity(
        torch,
        torch_resnet(TINY, 4, imagenet=False),
        resnet.CifarResNet18(num_classes=4, width=TINY),
        x,
        tmp_path,
    )


def test_adaptive_avg_pool_matches_torch():
    torch, _, _ = _torch_modules()
    rs = np.random.RandomState(3)
    for in_hw, out_hw in [
        ((1, 1), (7, 7)),
        ((2, 3), (7, 7)),
        ((10, 5), (7, 3)),
        ((9, 9), (4, 4)),
    ]:
        x = rs.standard_normal((1, 2) + in_hw).astype(np.float32)
        expected = torch.nn.functional.adaptive_avg_pool2d(
            torch.from_numpy(x), out_hw
        ).numpy()
        got = common.adaptive_avg_pool(np.transpose(x, (0, 2, 3, 1)), out_hw)
        np.testing.assert_allclose(
            np.transpose(np.asarray(got), (0, 3, 1, 2)), expected, rtol=1e-6, atol=1e-6
        )
