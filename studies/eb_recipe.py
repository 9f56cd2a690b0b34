"""Early-Bird's own recipe on CIFAR-10, with and without the sparsity term (issue 12).

  python -m wormjax.study run eb_recipe
  python -m wormjax.study report eb_recipe

Three detectors (p = 0.3, 0.5, 0.7) watch one training (``search.prune_ratios``);
each ticket is then pruned structurally and retrained as its own arm. The two
experiments differ only in the network-slimming term on the BatchNorm scales
(``optim.sparsity`` 1e-4 vs 0), and start from the same initialisation with the
same data order in each seed, so the pair shows what the term changes.
"""

from studies import _common
from wormjax.study import Study, StudyExperiment

# configs/vgg11_eb_official.py (SGD lr 0.1, momentum 0.9, weight decay 1e-4 on
# every parameter, batch 256, BN scales 0.5, pad-crop-flip, CIFAR mean/std,
# structured pruning), at CPU scale: width 0.25, a class-balanced 20k subset,
# at most 16 search epochs. The EB code's lr stays 0.1 for its first 80 of 160
# epochs, so over a 16-epoch search and a short retraining the lr is constant
# here (the step schedule over 21 epochs would drop it mid-search). 16 epochs
# are 10% of the EB code's 160: its tickets appear within its first ~20%.
_EB = {
    "data.dir": _common.CIFAR10,
    "model.width": 0.25,
    "data.train_limit": 20000,
    "progress_bar": False,
    "optim.schedule": "constant",
    "search.prune_ratios": "0.3,0.5,0.7",
    "search.max_epochs": 16,
    "retrain.max_epochs": 5,
}


def get_study():
    """The plan ``python -m wormjax.study`` runs and reports."""
    return Study(
        name="eb_recipe",
        description=(
            "Early-Bird's own training recipe (network-slimming sparsity 1e-4 on "
            "the BatchNorm scales, SGD 0.1, momentum 0.9, weight decay 1e-4, BN "
            "scales 0.5, augmentation) on VGG-11 width 0.25, a class-balanced 20k "
            "CIFAR-10 subset, test-split accuracy; three prune ratios searched in "
            "one training, each ticket pruned structurally and retrained for 5 "
            "epochs. The same run without the sparsity term, from the same "
            "initialisation and data order, shows what the term changes."),
        experiments=[
            StudyExperiment("sparsity", "configs/vgg11_eb_official.py", protocol="eb",
                            overrides={**_EB, "optim.sparsity": 1e-4}, seeds=range(3),
                            description="With the EB code's sparsity term (1e-4)."),
            StudyExperiment("no_sparsity", "configs/vgg11_eb_official.py",
                            protocol="eb", overrides={**_EB, "optim.sparsity": 0.0},
                            seeds=range(3),
                            description="Without it; everything else the same."),
        ],
        pairs=(),
        # Same initialisation and data order per seed: the term's effect, by ratio.
        cross_pairs=tuple((f"no_sparsity/eb_p{p}", f"sparsity/eb_p{p}")
                          for p in ("0.3", "0.5", "0.7")),
    )
