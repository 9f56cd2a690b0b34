"""Reproduction studies: plans of experiments x seeds, results JSON, report.

``python -m wormjax.study run STUDY`` runs a plan from ``studies/``;
``python -m wormjax.study report STUDY`` regenerates its tables and figures
from ``docs/results/STUDY.json``.
"""

from wormjax.study.plan import Study
from wormjax.study.plan import StudyExperiment
from wormjax.study.stats import paired
from wormjax.study.stats import sign_test
from wormjax.study.stats import summarize

__all__ = ["Study", "StudyExperiment", "paired", "sign_test", "summarize"]
