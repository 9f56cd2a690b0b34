"""ResNet-18 on CIFAR-10, EB Train (no truncation): the paper's settings.

  python launch.py --config=configs/resnet18_eb.py --config.data.dir=/path/to/cifar-10-python.tar.gz
"""

from configs import base


def get_config():
    return base.paper_config("cifar_resnet18", schedule="none")
