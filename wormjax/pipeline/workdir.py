"""The experiment's output folder: usable before any work, and one run at a time.

Two processes writing one workdir would double every record and race on the
checkpoints, so a run holds an exclusive ``flock`` on ``<workdir>/.lock`` for
its whole life. The OS drops the lock when the process dies, however it
dies, so a killed run never blocks its own resume.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator

__all__ = ["WorkdirInUseError", "prepare", "locked"]

LOCK_NAME = ".lock"


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock."""


def prepare(workdir: str) -> str:
    """Creates ``workdir`` if needed and checks it can be written.

    Args:
      workdir: the output folder.

    Returns:
      Its absolute path.

    Raises:
      ValueError: the path is a file, lies under a file, or is not writable.
    """
    path = os.path.abspath(workdir)
    parent = path
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir {workdir} is a file, not a folder; pass a folder "
                         "path (it is created if missing)")
    if not os.path.isdir(parent):
        raise ValueError(f"--workdir {workdir} lies under {parent}, which is a file; "
                         "pass a path under a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--workdir {workdir} cannot be created ({err.strerror}); "
                         "pass a folder you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir} is not writable; pass a folder you can "
                         "write")
    return path


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds ``<workdir>/.lock`` (with this process's id in it) for the block.

    Raises:
      WorkdirInUseError: another live process holds it; names its pid.
    """
    path = os.path.join(workdir, LOCK_NAME)
    # "a+": opening must not truncate the holder's pid before the lock is ours.
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise WorkdirInUseError(
                f"workdir {workdir} is in use by process {holder} (its lock is "
                f"{path}); wait for that run to end, or pass another --workdir"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
