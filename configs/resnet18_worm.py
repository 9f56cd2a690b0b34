"""ResNet-18 on CIFAR-10, WORM (truncation once d_avg < s + delta): the paper's settings.

  python launch.py --config=configs/resnet18_worm.py --config.data.dir=/path/to/cifar-10-python.tar.gz
"""

from configs import base


def get_config():
    return base.paper_config("cifar_resnet18", schedule="worm")
