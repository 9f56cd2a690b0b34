"""Shared defaults: the paper's CNN recipe (Early-Bird / WORM on CIFAR-10).

Every experiment config derives from ``get_config()`` here and changes only
what differs. Any field can be overridden on the command line, e.g.
``--config.search.max_epochs=3``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "image"  # image (CNN on CIFAR-10 / digits) | text (BERT on GLUE)
    c.seed = 0  # initial weights and data order; seed i of N uses seed + i
    c.log_every_steps = 50  # read running metrics (the only host sync) this often
    c.progress_bar = True  # one tqdm bar per epoch on stderr

    c.model = ml_collections.ConfigDict()
    c.model.name = "cifar_vgg11"  # cifar_vgg11 | cifar_resnet18 | tv_vgg11_bn | tv_resnet18
    c.model.width = 1.0  # channel multiplier (CPU experiments use narrow widths)
    c.model.num_classes = 0  # 0: the data set's number of classes
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16
    c.model.pretrained = ""  # torchvision state dict file (.safetensors / .pth)
    c.model.replace_head = True  # with pretrained: new head for num_classes
    c.model.bn_scale_init = 1.0  # initial BatchNorm scale gamma (Early-Bird's code: 0.5)

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"  # cifar10 | digits (bundled offline demo)
    c.data.source = "local"  # local (python-version tarball or folder) | tfds
    c.data.dir = ""  # local: cifar-10-python.tar.gz or its folder; tfds: data_dir
    c.data.normalization = "half"  # half (paper: mean 0.5, std 0.5) | cifar
    c.data.augment = False  # pad-4 crop + flip (the paper used none)
    c.data.train_limit = 0  # 0: all; else a class-balanced subset of this size
    c.data.eval_limit = 0  # 0: all of the evaluation split (eval_split=train: of the training subset)
    c.data.eval_split = "test"  # test | train (the authors measured on train)
    c.data.prefetch = 2  # batches transferred to the device ahead of the step

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | adamw
    c.optim.learning_rate = 0.01  # constant for sgd (the paper)
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 0  # adamw: linear warm-up, then linear decay
    c.optim.grad_clip_norm = 0.0  # 0: no clipping
    c.optim.batch_size = 32  # the paper's batch
    c.optim.eval_batch_size = 500
    c.optim.sparsity = 0.0  # network slimming: grad(BN scale) += s * sign(scale); 0 = off
    # auto (sgd: constant, adamw: warmup_linear) | constant | step | warmup_linear
    c.optim.schedule = "auto"
    c.optim.step_fractions = "0.5,0.75"  # step: lr drops at these fractions of all steps
    c.optim.step_factor = 0.1  # step: lr multiplier at each drop, in (0, 1]
    c.optim.decay_norm_and_bias = False  # weight decay on norm scales and biases too
    # A fresh optimizer (state and schedule) at every epoch's start, as the WORM
    # authors' BERT code did by building a new HF Trainer per epoch; the schedule
    # then spans one epoch.
    c.optim.reset_each_epoch = False

    c.search = ml_collections.ConfigDict()
    c.search.schedule = "worm"  # none (EB Train) | worm | always | greedy
    c.search.prune_ratio = 0.5  # p: fraction of representative entries pruned
    # Several detectors over one training, e.g. "0.3,0.5,0.7" (the EB code):
    # each ratio's ticket is pruned and retrained as its own arm; "" = prune_ratio.
    c.search.prune_ratios = ""
    # The ratio whose mask and trigger drive truncation when several are searched
    # (a truncating schedule needs one); 0 = not named.
    c.search.primary_ratio = 0.0
    c.search.window = 5  # l: masks in the FIFO window
    c.search.stop_distance = 0.1  # s: stop when every distance <= s
    c.search.trigger_margin = 0.05  # delta: WORM starts once d_avg < s + delta
    c.search.truncation_ratio = 3e-3  # r: gradient multiplier of pruned entries
    c.search.placement = "gradient"  # gradient (before the optimizer) | update
    c.search.max_epochs = 20  # the search ends unconverged after this many
    # Write each update's representative magnitudes (<run>/search_magnitudes/)
    # for wormjax.replay / `python -m wormjax.study.scan`.
    c.search.record_magnitudes = False

    c.pruning = ml_collections.ConfigDict()
    c.pruning.mode = "mask"  # mask (persistent BN channel mask) | reference | structured
    c.pruning.min_channels = 1  # structured: no layer narrower than this
    c.pruning.channel_multiple = 1  # structured: round widths up to a multiple
    # Recompute BatchNorm running statistics on this many training batches after
    # pruning (train mode, no update), before the post-prune evaluation; 0 = off.
    c.pruning.recalibrate_bn_batches = 0

    c.retrain = ml_collections.ConfigDict()
    c.retrain.max_epochs = 10
    c.retrain.target_kind = "absolute"  # absolute (authors: 0.90) | relative
    c.retrain.target = 0.9  # accuracy, or fraction of the pre-prune accuracy

    c.experiment = ml_collections.ConfigDict()
    c.experiment.schedules = ""  # e.g. "none,worm": paired arms; "" = search.schedule
    c.experiment.placements = ""  # e.g. "gradient,update"; "" = search.placement
    c.experiment.sweep_ratios = ""  # e.g. "1,0.5,0.1": Table I (schedule always)
    c.experiment.num_seeds = 1  # seeds seed .. seed + num_seeds - 1

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data-parallel axis; -1: all of every host
    c.mesh.distributed = "auto"  # jax.distributed.initialize: auto (env) | on | off

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.max_to_keep = 2  # older good checkpoints kept beside the newest
    return c


def paper_config(model_name: str, schedule: str) -> ml_collections.ConfigDict:
    """The paper's CIFAR-10 setting for one network and one search schedule.

    The four paper configs (``vgg11_eb``, ``vgg11_worm``, ``resnet18_eb``,
    ``resnet18_worm``) differ from these defaults in these two fields only.

    Args:
      model_name: ``model.name``: "cifar_vgg11" or "cifar_resnet18".
      schedule: ``search.schedule``: "none" (EB Train) or "worm".
    """
    c = get_config()
    c.model.name = model_name
    c.search.schedule = schedule
    return c
