"""Tables II/III under the authors' protocol: EB vs WORM (and greedy), paired by seed.

  python -m wormjax.study run cnn_authors      # resumable, seed by seed
  python -m wormjax.study report cnn_authors   # tables + figures from the JSON
"""

from studies import _common
from wormjax.study import Study, StudyExperiment


def get_study():
    """The plan ``python -m wormjax.study`` runs and reports."""
    return Study(
        name="cnn_authors",
        description=(
            "The paper's Tables II (VGG-11) and III (ResNet-18) with the protocol "
            "the authors' code really used (train-split accuracy, reference "
            "pruning, absolute 0.90 target, no augmentation, 0.5/0.5 "
            "normalisation), at width 0.25 from a random initialisation (their "
            "pretrained torchvision weights are not available offline). EB Train "
            "and WORM (and, for VGG-11, the greedy schedule) start from the same "
            "initialisation and see the same data order in each seed."),
        experiments=[
            StudyExperiment(
                "vgg11", "configs/vgg11_worm.py", protocol="authors",
                overrides={**_common.CNN, **_common.AUTHORS,
                           "experiment.schedules": "none,worm,greedy"},
                seeds=range(5),
                description="VGG-11 width 0.25, all 50k CIFAR-10 training images."),
            StudyExperiment(
                "resnet18", "configs/resnet18_worm.py", protocol="authors",
                overrides={**_common.CNN, **_common.AUTHORS,
                           "experiment.schedules": "none,worm",
                           "data.train_limit": 20000},
                seeds=range(3),
                description="ResNet-18 width 0.25 on a class-balanced 20k subset "
                            "of the training images (a full run does not fit the "
                            "2-core machine's sessions)."),
        ],
        pairs=(("eb", "worm"), ("eb", "greedy")),
    )
