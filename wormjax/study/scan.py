"""``python -m wormjax.study.scan RUN_DIR``: when would WORM trigger, for every setting?

Reads the magnitudes an EB Train run recorded (``search.record_magnitudes``)
and replays the Early-Bird rule (``wormjax.replay``) over a grid of prune
ratios, windows, stop distances s and trigger margins delta. Up to its
trigger a WORM run is the EB run, so each row is exact: the update at which
the trigger would fire (if before the stop), and the update at which EB
Train stops. ``--authors_qk_mask_bug`` replays the WORM authors' Q/K
distances (``wormjax.quirks``). Prints a markdown table; ``--json`` also
writes the rows. The recording ends where its own run's search stopped, so
record with a small ``search.stop_distance`` (the run then searches up to
``search.max_epochs``) to scan settings stricter than the run's.

  python -m wormjax.study.scan runs/rte/eb_seed0 --stop_distance 0.01,0.005 \\
      --trigger_margin 0.005,0.01 --window 3,5
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from wormjax import search_replay as replay_lib
from wormjax import search as search_lib
from wormjax.pipeline import magnitudes_log

__all__ = ["grid", "scan", "markdown", "main"]


def grid(*, prune_ratios, windows, stop_distances, trigger_margins
         ) -> list[search_lib.EarlyBirdConfig]:
    """Every setting of the grid as a validated ``EarlyBirdConfig``.

    Raises:
      ValueError: a setting ``EarlyBirdConfig`` refuses (named in its message).
    """
    return [search_lib.EarlyBirdConfig(prune_ratio=p, window=window, stop_distance=s,
                                       trigger_margin=delta)
            for p, window, s, delta in itertools.product(prune_ratios, windows,
                                                         stop_distances, trigger_margins)]


def scan(magnitudes, configs, counted=None) -> list[dict]:
    """One row per setting: first full window, trigger and stop updates.

    Args:
      magnitudes: float [T, N] recorded magnitudes, one row per update.
      configs: the settings (``grid``).
      counted: the authors' counted entries, or None for the paper's rule.

    Returns:
      Rows with the setting, ``first_full`` (the first update with a full
      window, or -1), ``d_max_first_full``, ``trigger_update`` and
      ``stop_update`` (-1: never within the recording) and ``worm_triggers``.
    """
    rows = []
    for config in configs:
        trace = replay_lib.replay(magnitudes, config, counted)
        window = config.window
        first_full = window - 1 if len(trace.d_max) >= window else -1
        rows.append({
            "prune_ratio": config.prune_ratio, "window": window,
            "stop_distance": config.stop_distance,
            "trigger_margin": config.trigger_margin, "updates": len(trace.d_max),
            "first_full": first_full,
            "d_max_first_full": (float(trace.d_max[first_full]) if first_full >= 0
                                 else None),
            "d_max_min": float(trace.d_max.min()),
            "trigger_update": trace.trigger_update, "stop_update": trace.stop_update,
            "worm_triggers": trace.trigger_update >= 0,
        })
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a pipe table (``-`` for never within the recording)."""
    def cell(key, value):
        if value is None or value == -1:
            return "-"
        if key.startswith("d_max"):
            return f"{value:.4f}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    head = ["p", "window", "s", "delta", "first full window", "d_max there",
            "lowest d_max", "WORM trigger", "EB stop"]
    keys = ["prune_ratio", "window", "stop_distance", "trigger_margin", "first_full",
            "d_max_first_full", "d_max_min", "trigger_update", "stop_update"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(cell(k, r[k]) for k in keys) + " |")
    return "\n".join(lines)


def _values(flag: str, text: str, kind) -> list:
    """``--flag a,b,c`` as a non-empty list of ``kind``, or an error naming the flag."""
    try:
        values = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{flag}={text!r}: give comma-separated "
                         f"{'integers' if kind is int else 'numbers'}") from None
    if not values:
        raise ValueError(f"--{flag} is empty; give at least one value")
    return values


def main(argv=None) -> int:
    """Runs the scan CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m wormjax.study.scan",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="an EB run's folder (e.g. <workdir>/eb_seed0)")
    parser.add_argument("--prune_ratio", default="0.5")
    parser.add_argument("--window", default="3,5")
    parser.add_argument("--stop_distance", default="0.1,0.05,0.01,0.005")
    parser.add_argument("--trigger_margin", default="0.05,0.01,0.005")
    parser.add_argument("--authors_qk_mask_bug", action="store_true",
                        help="count only the key entries, as the authors' mask did")
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        # Every setting is validated before any file is read.
        configs = grid(prune_ratios=_values("prune_ratio", args.prune_ratio, float),
                       windows=_values("window", args.window, int),
                       stop_distances=_values("stop_distance", args.stop_distance, float),
                       trigger_margins=_values("trigger_margin", args.trigger_margin,
                                               float))
        mags, counted = magnitudes_log.load(args.run_dir)
        if args.authors_qk_mask_bug and counted is None:
            raise ValueError(f"{args.run_dir} recorded no query/key representative; "
                             "--authors_qk_mask_bug needs one")
        rows = scan(mags, configs, counted if args.authors_qk_mask_bug else None)
    except (ValueError, FileNotFoundError) as err:
        print(f"wormjax.study.scan: {err}", file=sys.stderr)
        return 2
    print(f"{args.run_dir}: {mags.shape[0]} updates of {mags.shape[1]} entries"
          f"{' (authors Q/K distances)' if args.authors_qk_mask_bug else ''}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
