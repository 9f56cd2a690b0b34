"""A study plan: named experiments (a config file plus overrides) over seeds.

Plans are code, like configs: ``studies/<name>.py`` defines ``get_study()``
returning a :class:`Study`. Each experiment runs one seed at a time (one
``run_experiment`` call per seed, every arm of that seed from the same
initialisation and data order), so a study is resumable and can be split into
chunks seed by seed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import operator
import os
import sys
from typing import Any, Mapping, Sequence

import ml_collections

__all__ = ["StudyExperiment", "Study", "split_arm", "load_study", "load_config",
           "experiment_config", "find_data"]

# Fields a study sets per unit; a plan must not set them in its overrides.
_UNIT_FIELDS = ("seed", "experiment.num_seeds")


@dataclasses.dataclass(frozen=True)
class StudyExperiment:
    """One experiment of a study: a config, its overrides and its seeds.

    Attributes:
      name: unique within the study; names its workdir and its JSON rows.
      config: path of a ``configs/`` file, relative to the repository root.
      overrides: dotted config fields -> values, as on the command line.
      seeds: the seeds to run (each is one resumable unit).
      protocol: a label for the tables (``authors``, ``honest``, ``eb``...).
      description: one line for the report.
    """

    name: str
    config: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    protocol: str = ""
    description: str = ""

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"experiment name must be letters, digits, _ or -, "
                             f"got {self.name!r}")
        bad = sorted(set(self.overrides) & set(_UNIT_FIELDS))
        if bad:
            raise ValueError(f"experiment {self.name!r} overrides {bad}; the study "
                             "runner sets them per seed (use seeds=)")
        try:  # operator.index: 1.5 or "3" (also each char of "012") are refused
            seeds = tuple(operator.index(s) for s in self.seeds)
        except TypeError:
            seeds = ()
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"experiment {self.name!r}: seeds must be distinct "
                             f"integers >= 0, got {self.seeds!r}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "overrides", dict(self.overrides))


def split_arm(arm: str) -> tuple[str, str]:
    """``"experiment/variant"`` (a ``Study.cross_pairs`` arm) as its two names."""
    experiment, _, variant = str(arm).partition("/")
    return experiment, variant


@dataclasses.dataclass(frozen=True)
class Study:
    """A named list of experiments, reported together.

    Attributes:
      name: the study's name; its results live in ``docs/results/<name>.json``.
      description: what the study measures (shown at the top of the report).
      experiments: the experiments, in report order.
      pairs: (reference variant, compared variant) pairs to compare seed by
        seed within each experiment, e.g. ``(("eb", "worm"),)``.
      cross_pairs: pairs of ``"experiment/variant"`` arms of two experiments,
        compared seed by seed as ``pairs`` are (e.g. the paper's Table IV vs
        Table V: ``(("rte_qkv/eb", "rte_qk/eb"),)``). Their seeds start from
        the same initialisation only where the two configs build the same
        model and data order; the study's description should say so.
    """

    name: str
    description: str
    experiments: Sequence[StudyExperiment]
    pairs: Sequence[tuple[str, str]] = (("eb", "worm"),)
    cross_pairs: Sequence[tuple[str, str]] = ()

    def __post_init__(self):
        names = [e.name for e in self.experiments]
        if not names:
            raise ValueError(f"study {self.name!r} has no experiments")
        if len(set(names)) != len(names):
            raise ValueError(f"study {self.name!r} repeats experiment names: {names}")
        object.__setattr__(self, "experiments", tuple(self.experiments))
        for pair in tuple(self.pairs) + tuple(self.cross_pairs):
            if (isinstance(pair, str) or len(pair) != 2
                    or not all(isinstance(a, str) and a for a in pair)):
                raise ValueError(f"study {self.name!r}: a pair must be two arm names "
                                 f"(reference, compared), got {pair!r}")
        object.__setattr__(self, "pairs", tuple(tuple(p) for p in self.pairs))
        for pair in self.cross_pairs:
            for arm in pair:
                experiment, variant = split_arm(arm)
                if experiment not in names or not variant:
                    raise ValueError(
                        f"study {self.name!r}: cross_pairs arm {arm!r} must be "
                        f"'experiment/variant' with experiment one of {names}")
        object.__setattr__(self, "cross_pairs",
                           tuple(tuple(p) for p in self.cross_pairs))

    def experiment(self, name: str) -> StudyExperiment:
        """The experiment called ``name``."""
        for e in self.experiments:
            if e.name == name:
                return e
        raise ValueError(f"study {self.name!r} has no experiment {name!r}; it has "
                         f"{', '.join(e.name for e in self.experiments)}")


def _import_file(path: str, root: str):
    # Plans and configs import ``configs.base`` and ``wormjax``; both resolve
    # from the repository root.
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "_wormjax_file_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_study(name_or_path: str, root: str) -> Study:
    """The study of ``studies/<name>.py`` under ``root`` (or of a file path)."""
    path = name_or_path if name_or_path.endswith(".py") else os.path.join(
        root, "studies", f"{name_or_path}.py")
    if not os.path.isfile(path):
        folder = os.path.join(root, "studies")
        known = sorted(f[:-3] for f in os.listdir(folder)
                       if f.endswith(".py") and not f.startswith("_")) \
            if os.path.isdir(folder) else []
        raise ValueError(f"no study plan at {path}; known studies: "
                         f"{', '.join(known) or 'none'}")
    study = _import_file(path, root).get_study()
    if not isinstance(study, Study):
        raise ValueError(f"{path}: get_study() must return a wormjax.study.Study, "
                         f"got {type(study).__name__}")
    return study


def load_config(path: str, root: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, locked so unknown fields raise."""
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.isfile(full):
        raise ValueError(f"no config file at {full}")
    config = _import_file(full, root).get_config()
    config.lock()
    return config


def experiment_config(experiment: StudyExperiment, seed: int, root: str
                      ) -> ml_collections.ConfigDict:
    """The config of one unit: the experiment's config, overrides and seed."""
    config = load_config(experiment.config, root)
    fields = dict(experiment.overrides)
    fields.update({"seed": seed, "experiment.num_seeds": 1})
    for key, value in fields.items():
        node = config
        *parents, leaf = key.split(".")
        try:
            for part in parents:
                node = node[part]
            node[leaf] = value
        except (KeyError, AttributeError, TypeError) as err:
            raise ValueError(f"experiment {experiment.name!r}: cannot set {key}="
                             f"{value!r} ({err})") from None
    return config


def find_data(root: str, *parts: str) -> str:
    """A data file for a plan: ``$WORMJAX_DATA_DIR/<parts>`` or the shared copy.

    Looks in ``$WORMJAX_DATA_DIR`` first, then in ``shared/data`` beside the
    repository (the development machines' layout). Returns the first
    candidate that exists, else the ``$WORMJAX_DATA_DIR`` (or shared) path, so
    that the run's own error names where the data was expected.
    """
    candidates = []
    if os.environ.get("WORMJAX_DATA_DIR"):
        candidates.append(os.path.join(os.environ["WORMJAX_DATA_DIR"], *parts))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(root)), "shared",
                                   "data", *parts))
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]
