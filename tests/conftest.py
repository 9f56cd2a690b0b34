"""Shared test helpers: where the read-only shared data sits, if anywhere."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def shared_data(*parts: str) -> str | None:
    """Path under ``shared/data`` beside the checkout (CI's layout), or None."""
    for root in (os.environ.get("WORMJAX_SHARED_DIR"), REPO.parent / "shared",
                 pathlib.Path("/work/shared")):
        if root:
            candidate = pathlib.Path(root, "data", *parts)
            if candidate.exists():
                return str(candidate)
    return None


def set_fields(config, overrides: dict):
    """Sets dotted config fields (``{"search.window": 2}``), as the CLI would."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config
