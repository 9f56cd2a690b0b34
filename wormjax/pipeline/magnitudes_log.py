"""The search's representative magnitudes, one file per update, for ``wormjax.replay``.

With ``search.record_magnitudes=True`` a run writes, at every Early-Bird
update, the flat float32 magnitudes the update ranked
(``<run>/search_magnitudes/update_0003.npy``), so that ``wormjax.replay``
and ``python -m wormjax.study.scan`` can replay the stop rule and the WORM
trigger for any prune ratio, window, s and delta afterwards. float32, not a
smaller type: a coarser copy would rank tied entries differently and so
replay other masks than the run drew. For a query/key representative the
entries the WORM authors' mask bug compared are saved once beside them
(``authors_qk_counted.npy``). Files are written atomically and a resumed run
writes the same bytes again. MiniLM's Q/K kernels are 7 MB per update; a
CIFAR CNN's BatchNorm scales a few KB. Never commit them.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from wormjax import masks
from wormjax import quirks

__all__ = ["FOLDER", "record", "load"]

FOLDER = "search_magnitudes"
_COUNTED = "authors_qk_counted.npy"


def _save(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)  # atomic: a kill never leaves half a file


def record(run_dir: str, update: int, layout, params) -> None:
    """Writes update ``update``'s representative magnitudes of ``params``.

    Args:
      run_dir: the run's folder.
      update: the search update's index (its search epoch).
      layout: the task's ``TicketLayout`` (which leaves, in which order).
      params: the parameters the update ranked.
    """
    folder = os.path.join(run_dir, FOLDER)
    os.makedirs(folder, exist_ok=True)
    mags = np.asarray(jax.device_get(masks.flat_magnitudes(layout.representative(params))))
    _save(os.path.join(folder, f"update_{update:04d}.npy"), mags)
    counted_path = os.path.join(folder, _COUNTED)
    if not os.path.exists(counted_path):
        try:
            counted = quirks.authors_qk_counted(layout)
        except ValueError:  # not a query/key representative
            return
        _save(counted_path, np.asarray(counted, bool))


def load(run_dir: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(magnitudes [T, N], authors' counted [N] or None)`` recorded in ``run_dir``.

    Raises:
      FileNotFoundError: nothing was recorded there, or an update is missing.
    """
    folder = os.path.join(run_dir, FOLDER)
    names = sorted(n for n in os.listdir(folder) if n.startswith("update_")
                   and n.endswith(".npy") and ".tmp" not in n) if os.path.isdir(
                       folder) else []
    if not names:
        raise FileNotFoundError(
            f"no recorded magnitudes in {folder}; run with "
            "--config.search.record_magnitudes=True")
    updates = [int(n[len("update_"):-len(".npy")]) for n in names]
    if updates != list(range(len(updates))):
        raise FileNotFoundError(f"{folder} holds updates {updates}; a replay needs "
                                "every update from 0 on")
    mags = np.stack([np.load(os.path.join(folder, n)) for n in names])
    counted_path = os.path.join(folder, _COUNTED)
    counted = np.load(counted_path) if os.path.exists(counted_path) else None
    return mags, counted
