"""``python -m wormjax.study.movement RUN_DIR...``: did WORM's truncation hold entries still?

WORM scales the gradients of the entries the newest mask would prune. Whether
that slows those entries down depends on where the scaling sits: before an
adaptive optimizer (the paper's placement) Adam's normalisation can undo a
constant factor; after it (``placement=update``) the step itself shrinks.
This compares, between two search updates of runs that recorded their
magnitudes (``search.record_magnitudes``), how far the to-be-pruned entries
of the first update's mask moved against the kept ones. A ratio near 1 means
the truncation did not slow them (as in EB Train), near r that it did.
Each run's ticket is also compared with the first run's (mask distance).

  python -m wormjax.study.movement W/eb_seed0 W/worm_gradient_seed0 \\
      W/worm_update_seed0 --start 2 --stop 3 --prune_ratio 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax.numpy as jnp
import numpy as np

from wormjax import masks
from wormjax.pipeline import magnitudes_log

__all__ = ["movement", "markdown", "main"]


def _keep(magnitudes: np.ndarray, prune_ratio: float) -> np.ndarray:
    return np.asarray(masks.flat_magnitude_mask(jnp.asarray(magnitudes), prune_ratio))


def movement(magnitudes: np.ndarray, start: int, stop: int, prune_ratio: float) -> dict:
    """Mean |change| of pruned and kept entries from update ``start`` to ``stop``.

    Args:
      magnitudes: float [T, N] recorded magnitudes, one row per update.
      start: the update whose mask splits the entries (WORM's truncation
        during the epoch after ``start`` uses it).
      stop: a later update.
      prune_ratio: p of that mask.

    Returns:
      ``{"pruned": mean |m[stop] - m[start]| over the pruned entries, "kept":
      the same over the kept ones, "ratio": pruned / kept}``.

    Raises:
      ValueError: the updates are not ``0 <= start < stop < T``.
    """
    updates = magnitudes.shape[0]
    if not 0 <= start < stop < updates:
        raise ValueError(f"need 0 <= start < stop < {updates} (the recorded updates), "
                         f"got start={start}, stop={stop}")
    keep = _keep(magnitudes[start], prune_ratio)
    change = np.abs(magnitudes[stop].astype(np.float64) - magnitudes[start])
    pruned, kept = float(change[~keep].mean()), float(change[keep].mean())
    return {"pruned": pruned, "kept": kept, "ratio": pruned / kept if kept else None}


def markdown(rows: list[dict]) -> str:
    """Rows of ``main`` as a pipe table."""
    lines = ["| run | updates | pruned mean abs change | kept mean abs change | "
             "pruned / kept | ticket distance to the first run |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.4f}"
        lines.append(f"| {r['run']} | {r['start']} -> {r['stop']} | {r['pruned']:.3e} | "
                     f"{r['kept']:.3e} | {ratio} | {r['ticket_distance']:.5f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Runs the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m wormjax.study.movement",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders (e.g. <workdir>/eb_seed0)")
    parser.add_argument("--start", type=int, required=True, help="the mask's update")
    parser.add_argument("--stop", type=int, required=True, help="a later update")
    parser.add_argument("--prune_ratio", type=float, default=0.5)
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)
    if not 0.0 < args.prune_ratio < 1.0:
        parser.error(f"--prune_ratio must be in (0, 1), got {args.prune_ratio}")
    rows, first_ticket = [], None
    try:
        for run_dir in args.run_dirs:
            mags, _ = magnitudes_log.load(run_dir)
            row = movement(mags, args.start, args.stop, args.prune_ratio)
            # The ticket: the mask of the last update the run recorded.
            ticket = _keep(mags[-1], args.prune_ratio)
            first_ticket = ticket if first_ticket is None else first_ticket
            if ticket.shape != first_ticket.shape:
                raise ValueError(f"{run_dir} holds {ticket.size} entries, the first run "
                                 f"{first_ticket.size}: not the same model")
            rows.append(dict(row, run=os.path.basename(os.path.normpath(run_dir)),
                             start=args.start, stop=args.stop,
                             ticket_distance=float(np.mean(ticket != first_ticket))))
    except (ValueError, FileNotFoundError) as err:
        print(f"wormjax.study.movement: {err}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
