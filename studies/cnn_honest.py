"""Tables II/III under our protocol: test split, mask and structured pruning,
relative target, post-prune BatchNorm recalibration off and on.

  python -m wormjax.study run cnn_honest
  python -m wormjax.study report cnn_honest
"""

from studies import _common
from wormjax.study import Study, StudyExperiment

_VGG = {**_common.CNN, **_common.HONEST, "experiment.schedules": "none,worm"}


def get_study():
    """The plan ``python -m wormjax.study`` runs and reports."""
    return Study(
        name="cnn_honest",
        description=(
            "EB Train vs WORM paired by seed, measured on the CIFAR-10 test split, "
            "pruning what the ticket prunes (mask: the BatchNorm channels stay "
            "zero while retraining; structured: a physically narrower network), "
            "retraining to 98% of the network's own pre-prune accuracy. "
            "BatchNorm recalibration recomputes the running statistics of the "
            "pruned network on 20 training batches before the post-prune "
            "evaluation and retraining."),
        experiments=[
            StudyExperiment("vgg11_mask", "configs/vgg11_worm.py", protocol="honest",
                            overrides={**_VGG, "pruning.mode": "mask"},
                            seeds=range(5), description="VGG-11 w0.25, mask pruning."),
            StudyExperiment("vgg11_mask_recal", "configs/vgg11_worm.py",
                            protocol="honest",
                            overrides={**_VGG, "pruning.mode": "mask",
                                       "pruning.recalibrate_bn_batches": 20},
                            seeds=range(5),
                            description="VGG-11 w0.25, mask pruning, BN recalibrated."),
            StudyExperiment("vgg11_structured_recal", "configs/vgg11_worm.py",
                            protocol="honest",
                            overrides={**_VGG, "pruning.mode": "structured",
                                       "pruning.recalibrate_bn_batches": 20},
                            seeds=range(5),
                            description="VGG-11 w0.25, structured pruning, BN "
                                        "recalibrated."),
            StudyExperiment("resnet18_mask_recal", "configs/resnet18_worm.py",
                            protocol="honest",
                            overrides={**_common.CNN, **_common.HONEST,
                                       "experiment.schedules": "none,worm",
                                       "data.train_limit": 20000,
                                       "pruning.mode": "mask",
                                       "pruning.recalibrate_bn_batches": 20},
                            seeds=range(3),
                            description="ResNet-18 w0.25, 20k class-balanced "
                                        "subset, mask pruning, BN recalibrated."),
        ],
        # Recalibration off vs on, and mask vs structured, seed by seed: the
        # searches are identical (recalibration acts after the ticket).
        cross_pairs=tuple((f"vgg11_mask/{arm}", f"vgg11_mask_recal/{arm}")
                          for arm in ("eb", "worm"))
        + tuple((f"vgg11_mask_recal/{arm}", f"vgg11_structured_recal/{arm}")
                for arm in ("eb", "worm")),
    )
