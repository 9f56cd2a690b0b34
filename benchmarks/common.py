"""Shared benchmark plumbing: sizes, shared data, the step cache, child processes, the CLI.

Every bench module exposes ``run(size) -> {"name", "rows", "notes", ...}`` and a
``main()`` built with :func:`cli`, so ``run_all`` can aggregate any of them and each
one also runs alone (``python -m benchmarks.bench_train_step --size small``). The
timing harness is ``timing``, the machine's description ``machine``, results and
their files ``output``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Callable, Sequence

from benchmarks import output

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = ("tiny", "small", "large")
SHARED_DATA_ROOTS = (os.environ.get("WORMJAX_SHARED_DIR"),
                     os.path.join(os.path.dirname(REPO_ROOT), "shared"), "/work/shared")


# Step times measured in this process, so that later benches (EB share, pipeline
# ratio, roofline) reuse bench_train_step's figures instead of re-measuring.
STEP_CACHE: dict[str, dict] = {}


def check_size(size: str) -> str:
    """Validates a size name.

    Args:
      size: "tiny" (smoke tests, seconds), "small" (CPU validation, minutes) or
        "large" (the full grid, for a dedicated machine).

    Returns:
      The size.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return size


def shared_data(*parts: str) -> str | None:
    """A path under the shared data folder (``shared/data/...``) if it exists, else None."""
    for root in SHARED_DATA_ROOTS:
        if root:
            candidate = os.path.join(root, "data", *parts)
            if os.path.exists(candidate):
                return candidate
    return None


def run_child(module: str, args: Sequence[str], env: dict | None = None) -> Any:
    """Runs ``python -m <module> <args>`` in a fresh interpreter and returns its result.

    For figures that need a process of their own: XLA flags (read once at start-up),
    compilation from a cold start, memory peaks. The child prints one line
    ``output.CHILD_MARKER + json`` (see :func:`child_output`).

    Args:
      module: e.g. "benchmarks.bench_compile".
      args: its command-line arguments.
      env: variables added to this process's environment.

    Returns:
      The decoded JSON.
    """
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False, env=full_env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(output.CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {module} {' '.join(args)} failed (rc "
                           f"{proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(output.CHILD_MARKER):])


def cli(run: Callable[[str], dict], description: str) -> None:
    """The command line of one bench: ``--size`` and an optional ``--out`` folder.

    Args:
      run: the bench's ``run(size)``.
      description: shown by ``--help``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="tiny: seconds (smoke test); small: CPU validation; "
                             "large: the full grid")
    parser.add_argument("--out", default="",
                        help="folder for <name>.json and <name>.md (else print only)")
    args = parser.parse_args()
    res = run(args.size)
    text = output.to_markdown(res)
    print(text)
    if args.out:
        output.write_json(os.path.join(args.out, f"{res['name']}.json"), res)
        with open(os.path.join(args.out, f"{res['name']}.md"), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}/{res['name']}.json and .md")
