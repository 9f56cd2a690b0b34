"""ResNet-18 on CIFAR-10 with Early-Bird's own recipe (see ``vgg16_eb_official``).

The EB code has no CIFAR ResNet-18 (its CIFAR ResNet is PreResNet-101, in the EB
paper's CIFAR results); this applies the EB code's recipe (SGD 0.1 stepped at
50%/75%, momentum 0.9, weight decay 1e-4 on every parameter, network-slimming
sparsity 1e-4 on every BN scale including the shortcut BNs, BN scales 0.5,
augmentation, CIFAR mean/std, batch 256, structured pruning at p = 0.5) to the
WORM paper's CIFAR ResNet-18 (4,800 BN channels), for comparison with
``resnet18_eb``.

  python launch.py --config=configs/resnet18_eb_official.py --config.data.dir=/path/to/cifar-10-python.tar.gz
"""

from configs import vgg16_eb_official


def get_config():
    return vgg16_eb_official.get_config("cifar_resnet18")
