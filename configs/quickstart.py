"""Quick start: the whole pipeline offline in a few minutes on a laptop CPU.

A smoke demo, not CIFAR: scikit-learn's bundled UCI handwritten digits (1,797
real 8x8 images, upscaled to 32x32x3) through the CIFAR pipeline, a narrow
VGG-11, EB Train and WORM from the same initialisation, search -> prune ->
retrain, then the paper-style table.

  python launch.py --config=configs/quickstart.py
"""

from configs import base


def get_config():
    c = base.get_config()
    c.model.name = "cifar_vgg11"
    c.model.width = 0.125  # 8..64 channels
    c.data.name = "digits"
    c.data.eval_split = "test"
    c.optim.batch_size = 32
    c.optim.eval_batch_size = 359  # the whole digits test split in one batch
    c.search.window = 3  # a short window so the demo converges in a few epochs
    c.search.max_epochs = 10
    c.retrain.max_epochs = 4
    c.retrain.target_kind = "relative"
    c.retrain.target = 0.98  # 98% of the pre-prune accuracy
    c.experiment.schedules = "none,worm"
    c.log_every_steps = 15
    return c
