"""VGG-11 on CIFAR-10 with Early-Bird's own recipe (see ``vgg16_eb_official``).

Early-Bird's CIFAR VGG-11 (its ``models/vgg.py``, depth 11; 2,752 BN channels)
under the EB code's recipe: SGD 0.1 stepped at 50%/75%, momentum 0.9, weight
decay 1e-4 on every parameter, network-slimming sparsity 1e-4, BN scales 0.5,
augmentation, CIFAR mean/std, batch 256, structured pruning at p = 0.5. The EB
paper reports VGG-16 and PreResNet-101, not VGG-11: this config compares the
EB recipe with the WORM paper's VGG-11 runs (``vgg11_eb``), same network.

  python launch.py --config=configs/vgg11_eb_official.py --config.data.dir=/path/to/cifar-10-python.tar.gz
"""

from configs import vgg16_eb_official


def get_config():
    return vgg16_eb_official.get_config("cifar_vgg11")
