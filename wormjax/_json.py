"""JSON values of what wormjax writes: arrays, ConfigDicts, sets and paths.

One ``default`` for ``json.dumps`` everywhere the library writes JSON (run
summaries, metrics, compact-model metadata, study results), so every file
spells a numpy scalar or a set the same way.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["default"]


def default(obj: Any) -> Any:
    """The JSON value of ``obj``, for ``json.dumps(..., default=default)``.

    Raises:
      TypeError: ``obj`` has no JSON form (``json.dumps`` passes it on).
    """
    # numpy and jax scalars/arrays both expose tolist(); ConfigDicts expose to_dict().
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)  # a set has no order; sorted, the file is reproducible
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
