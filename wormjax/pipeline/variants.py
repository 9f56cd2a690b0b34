"""The arms of an experiment (EB Train, WORM, sweeps) and each arm's search config.

With ``search.prune_ratios`` one arm's training feeds several Early-Bird
detectors (``wormjax.multi_search``); each ratio's ticket is then pruned and
retrained as an arm of its own, named ``<arm>_p<ratio>`` (``ratio_variant``).
"""

from __future__ import annotations

import dataclasses

from wormjax import _validate
from wormjax import multi_search
from wormjax import search as search_lib
from wormjax.pipeline import state as state_lib

__all__ = ["Variant", "variants_from_config", "search_config", "prune_ratios",
           "multi_config", "ratio_variant", "arm_names"]

_VARIANT_NAMES = {"none": "eb", "worm": "worm", "always": "always", "greedy": "greedy"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a truncation schedule with its r and placement."""

    name: str
    schedule: str
    truncation_ratio: float
    placement: str = "gradient"
    # Set on the per-ratio arms of a multi-ratio search; None: search.prune_ratio.
    prune_ratio: float | None = None


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
    ratio = s.prune_ratio if variant.prune_ratio is None else variant.prune_ratio
    return search_lib.EarlyBirdConfig(
        prune_ratio=ratio, window=s.window, stop_distance=s.stop_distance,
        trigger_margin=s.trigger_margin, truncation_ratio=variant.truncation_ratio,
        schedule=variant.schedule)


def prune_ratios(config) -> tuple[float, ...] | None:
    """``search.prune_ratios`` as floats; None when it is empty (one ratio)."""
    given, primary = config.search.get("prune_ratios", ""), config.search.get(
        "primary_ratio", 0.0)
    text = _csv(given)
    if not text:
        if primary:
            raise ValueError(f"search.primary_ratio={primary!r} names one of "
                             "search.prune_ratios, which is empty; allowed: 0")
        return None
    ratios = []
    for t in text:
        try:
            ratios.append(float(t))
        except ValueError:
            raise ValueError(f"search.prune_ratios={given!r}: entry {t!r} is not a "
                             "number; allowed: comma-separated ratios in (0, 1) such as "
                             "'0.3,0.5,0.7', or '' for search.prune_ratio alone") from None
        _validate.open_interval("search.prune_ratios entry", ratios[-1], 0.0, 1.0)
    if len(set(ratios)) != len(ratios):
        raise ValueError(f"search.prune_ratios={given!r}: the ratios must be distinct")
    return tuple(ratios)


def multi_config(config, variant: Variant) -> multi_search.MultiRatioConfig | None:
    """The multi-ratio search of ``variant``, or None for the one-ratio search.

    Raises ``ValueError`` for an ambiguous config: several ratios, a truncating
    schedule and no ``search.primary_ratio`` (truncation can follow one mask).
    """
    ratios = prune_ratios(config)
    if ratios is None:
        return None
    primary = config.search.get("primary_ratio", 0.0) or None  # 0: not named
    try:
        return multi_search.MultiRatioConfig(search_config(config, variant), ratios,
                                             primary)
    except ValueError as err:
        raise ValueError(f"search.prune_ratios={config.search.prune_ratios!r}, "
                         f"arm {variant.name!r}: {err}") from None


def ratio_variant(variant: Variant, prune_ratio: float) -> Variant:
    """The arm that prunes and retrains ``variant``'s ticket of ``prune_ratio``."""
    return dataclasses.replace(variant, name=f"{variant.name}_p{prune_ratio:g}",
                               prune_ratio=float(prune_ratio))


def arm_names(config) -> list[str]:
    """The arms an experiment's summaries hold: one per ratio of a multi-ratio search."""
    ratios = prune_ratios(config)
    names = []
    for v in variants_from_config(config):
        names += [ratio_variant(v, p).name for p in ratios] if ratios else [v.name]
    return names
