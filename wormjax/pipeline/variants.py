"""The arms of an experiment (EB Train, WORM, sweeps) and each arm's search config."""

from __future__ import annotations

import dataclasses

from wormjax import _validate
from wormjax import search as search_lib
from wormjax.pipeline import state as state_lib

__all__ = ["Variant", "variants_from_config", "search_config"]

_VARIANT_NAMES = {"none": "eb", "worm": "worm", "always": "always", "greedy": "greedy"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a truncation schedule with its r and placement."""

    name: str
    schedule: str
    truncation_ratio: float
    placement: str = "gradient"


def _csv(text) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def variants_from_config(config) -> list[Variant]:
    """The experiment's arms, from ``config.search`` and ``config.experiment``."""
    exp, srch = config.experiment, config.search
    ratios = _csv(exp.sweep_ratios)
    if ratios:
        out = []
        for text in ratios:
            r = _validate.closed_interval("experiment.sweep_ratios entry", float(text),
                                          0.0, 1.0)
            out.append(Variant(f"always_r{text}", "always", r, srch.placement))
        return out
    schedules = _csv(exp.schedules) or [srch.schedule]
    placements = _csv(exp.placements) or [srch.placement]
    out = []
    for schedule in schedules:
        _validate.one_of("schedule", schedule, search_lib.SCHEDULES)
        for placement in placements:
            _validate.one_of("truncation placement", placement, state_lib.PLACEMENTS)
            if schedule == "none" and placement != placements[0]:
                continue  # EB Train never truncates: placement is moot
            name = _VARIANT_NAMES[schedule]
            if len(placements) > 1 and schedule != "none":
                name = f"{name}_{placement}"
            out.append(Variant(name, schedule, srch.truncation_ratio, placement))
    return out


def search_config(config, variant: Variant) -> search_lib.EarlyBirdConfig:
    """The Early-Bird search of ``variant`` (validates p, l, s, delta, r)."""
    s = config.search
    return search_lib.EarlyBirdConfig(
        prune_ratio=s.prune_ratio, window=s.window, stop_distance=s.stop_distance,
        trigger_margin=s.trigger_margin, truncation_ratio=variant.truncation_ratio,
        schedule=variant.schedule)
