"""Table I: a fixed truncation ratio r from epoch 0 (schedule always), VGG-11.

  python -m wormjax.study run cnn_table1
  python -m wormjax.study report cnn_table1
"""

from studies import _common
from wormjax.study import Study, StudyExperiment


def get_study():
    """The plan ``python -m wormjax.study`` runs and reports."""
    ratios = ("1", "0.5", "0.1", "0.05", "0.01", "0.003")
    return Study(
        name="cnn_table1",
        description=(
            "The paper's Table I: truncation with a fixed r from the first search "
            "epoch, r in {1, 0.5, 0.1, 0.05, 0.01} plus the paper's 3e-3, VGG-11 "
            "width 0.25 on a class-balanced 20k subset of CIFAR-10 (test split, "
            "mask pruning, relative target), 3 seeds; r = 1 is EB Train."),
        experiments=[
            StudyExperiment("vgg11_sweep", "configs/vgg11_worm.py", protocol="honest",
                            overrides={**_common.CNN, **_common.HONEST,
                                       "data.train_limit": 20000,
                                       "experiment.sweep_ratios": ",".join(ratios)},
                            seeds=range(3)),
        ],
        pairs=tuple(("always_r1", f"always_r{r}") for r in ratios[1:]),
    )
