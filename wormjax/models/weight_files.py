"""Reading checkpoint files (safetensors, torch pickles, JSON) with errors that name the file.

A truncated download or a wrong file otherwise surfaces as a bare library error
("header too large", "Expecting value: line 1 column 1") that names no file.
Every error here is a ValueError that names the path, says what is wrong and
what was expected.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from typing import Any, Iterator, Mapping

__all__ = ["TorchNotInstalledError", "read_json", "safetensors_errors", "torch_load"]

_REFETCH = "the file may be truncated or corrupt: download or export it again"


class TorchNotInstalledError(ImportError, ValueError):
    """A torch pickle was given but torch is not installed (a bad input, not a bug)."""


def _cause(err: Exception) -> str:
    # torch and safetensors messages run over several lines; the first says what failed.
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def read_json(path: str, expected: str) -> dict[str, Any]:
    """Reads a JSON object from ``path``.

    Args:
      path: the file.
      expected: what the file should hold, for the error, e.g. "a Hugging Face BERT
        config.json".

    Returns:
      The parsed object.

    Raises:
      ValueError: the file is not valid UTF-8 JSON or holds no JSON object.
    """
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = (f" at line {err.lineno} column {err.colno}"
                 if isinstance(err, json.JSONDecodeError) else "")
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
        raise ValueError(f"{path}: invalid JSON ({reason}{where}); expected {expected}")\
            from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not an object; "
                         f"expected {expected}")
    return value


@contextlib.contextmanager
def safetensors_errors(path: str) -> Iterator[None]:
    """Turns safetensors' errors inside the block into a ValueError naming ``path``."""
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    try:
        yield
    except SafetensorError as err:
        raise ValueError(
            f"{path}: not a readable safetensors file ({_cause(err)}); expected a "
            f"safetensors state dict (8-byte header size, JSON header, tensor data); "
            f"{_REFETCH}") from None


def torch_load(path: str, hint: str) -> Any:
    """Loads a torch pickle with ``weights_only=True`` on the CPU.

    Args:
      path: the ``.pth`` / ``.bin`` file.
      hint: how to do without torch, e.g. "convert it to model.safetensors".

    Returns:
      The unpickled mapping (tensors stay torch tensors).

    Raises:
      TorchNotInstalledError: torch is not installed (an ImportError and a ValueError).
      ValueError: the file is not a readable torch checkpoint.
    """
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise TorchNotInstalledError(
            f"{path} is a PyTorch pickle and reading it needs torch, which is not "
            f"installed; install torch (pip install 'wormjax[torch]') or {hint}") from None
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        # torch's own UnpicklingError text is about the weights_only default, not the file.
        cause = ("UnpicklingError: not a torch pickle, or one holding objects other than "
                 "tensors, which weights_only loading refuses"
                 if isinstance(err, pickle.UnpicklingError) else _cause(err))
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({cause}); "
                         f"expected a torch.save'd state dict of tensors; {_REFETCH}")\
            from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}; expected a torch.save'd "
                         "state dict (tensor name -> tensor)")
    return obj
