"""VGG-16 on CIFAR-10 with Early-Bird's own recipe: the EB paper's protocol.

Targets the EB paper (You et al., "Drawing Early-Bird Tickets", ICLR 2020,
arXiv 1909.11957): VGG-16 on CIFAR-10, EB Train, channel pruning of the BN
scales. The paper reports tickets drawn within the first ~10-20% of its 160
training epochs (Fig. 2's mask-distance plots) and retrained accuracy close to
the unpruned VGG-16 at p = 30/50/70%; its other CIFAR network, PreResNet-101,
is not in wormjax (``resnet18_eb_official`` applies the recipe to ResNet-18).

The recipe is the official code's (``GATECH-EIC/Early-Bird-Tickets``, ``main.py``
and ``scripts/standard-train/*.sh``; ALGORITHM.md section 7): SGD lr 0.1,
divided by 10 at 50% and 75% of training, momentum 0.9, weight decay 1e-4 on
every parameter including the BatchNorm ones, batch 256, pad-4 crop + flip,
CIFAR mean/std, BN scales initialised to 0.5, network-slimming sparsity
``grad(gamma) += 1e-4 * sign(gamma)``, window 5 and stop distance 0.1.

Epochs: the EB code's one schedule spans 160 epochs, and its retraining
(``retrain_continue.sh``) continues it from the ticket's epoch. Here the step
fractions refer to (search.max_epochs + retrain.max_epochs) x steps per epoch =
32 + 128 = 160 epochs. The search (at most 32 epochs, 20% of 160: the EB
tickets appear before that) therefore runs at lr 0.1 like the EB code's; the
retraining starts a fresh optimizer, so its lr drops at its epochs 80 and 120.
The EB code retrains the whole schedule; wormjax stops at ``retrain.target``
(0.9 absolute): ``--config.retrain.target=1.0`` retrains every epoch.

Pruning is ``structured``, as the EB code's ``vggprune.py``: a physically
narrower VGG-16 is retrained. Three detectors, p = 0.3, 0.5 and 0.7, watch one
training, as in the EB code (``search.prune_ratios``); each ticket is saved
when its detector stops (``tickets/EB-<p>-<epoch>``) and pruned and retrained
as its own arm (``eb_p0.3`` ...). ``--config.search.prune_ratios=`` searches
``search.prune_ratio`` alone.

  python launch.py --config=configs/vgg16_eb_official.py --config.data.dir=/path/to/cifar-10-python.tar.gz
"""

from configs import base


def get_config(model_name: str = "cifar_vgg16"):
    c = base.get_config()
    c.model.name = model_name
    c.model.bn_scale_init = 0.5  # EB's models: m.weight.data.fill_(0.5)

    c.data.augment = True  # pad-4 crop + horizontal flip
    c.data.normalization = "cifar"  # CIFAR mean/std

    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.decay_norm_and_bias = True  # torch's SGD weight_decay touches every param
    c.optim.schedule = "step"
    c.optim.step_fractions = "0.5,0.75"  # of 32 + 128 = 160 epochs: EB's 80 and 120
    c.optim.step_factor = 0.1
    c.optim.sparsity = 1e-4  # EB's --sparsity-regularization, --s 0.0001
    c.optim.batch_size = 256  # EB's scripts (argparse default 64)
    c.optim.eval_batch_size = 500

    c.search.schedule = "none"  # EB Train: no WORM truncation
    c.search.prune_ratio = 0.5  # with prune_ratios="": the one ratio
    c.search.prune_ratios = "0.3,0.5,0.7"  # EB's three detectors
    c.search.window = 5  # EB's epoch_keep
    c.search.stop_distance = 0.1  # EB: every distance <= 0.1
    c.search.max_epochs = 32  # 20% of EB's 160 epochs

    c.pruning.mode = "structured"  # EB's vggprune.py / resprune.py
    c.retrain.max_epochs = 128  # the rest of EB's 160 epochs
    c.retrain.target_kind = "absolute"
    c.retrain.target = 0.9
    return c
