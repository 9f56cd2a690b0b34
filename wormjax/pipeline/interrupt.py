"""Graceful stops: SIGINT/SIGTERM end the current step, checkpoint, and exit.

The signal handler only sets a flag. The training loop reads it between
steps (a host-side check, no device sync), stops early, and the run writes a
mid-epoch checkpoint with its data position before raising ``Interrupted``.
A second signal while stopping gets the default behaviour (an immediate
``KeyboardInterrupt``), so a stuck run can still be killed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Interrupted", "request_stop", "stop_requested", "signal_number", "clear",
           "handle_signals", "exit_code"]

_STOP = threading.Event()
_SIGNUM: list[int] = []


class Interrupted(Exception):
    """A run stopped on request after checkpointing; re-running resumes it.

    Attributes:
      signum: the signal that asked for the stop.
    """

    def __init__(self, signum: int, where: str):
        super().__init__(f"interrupted by {signal.Signals(signum).name} ({where})")
        self.signum = signum


def request_stop(signum: int = signal.SIGINT) -> None:
    """Asks the running training loop to stop after its current step."""
    _SIGNUM[:] = [signum]
    _STOP.set()


def stop_requested() -> bool:
    """Whether a stop was asked for (read between training steps)."""
    return _STOP.is_set()


def signal_number() -> int:
    """The signal of the pending stop (SIGINT when asked for directly)."""
    return _SIGNUM[0] if _SIGNUM else signal.SIGINT


def clear() -> None:
    """Forgets a pending stop (a new run in the same process)."""
    _STOP.clear()
    _SIGNUM.clear()


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


@contextlib.contextmanager
def handle_signals(signums=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Turns ``signums`` into stop requests for the block; restores the old handlers.

    Only the main thread may install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}

    def on_signal(signum, frame):
        del frame
        # The next one is not caught: a second Ctrl-C stops at once.
        signal.signal(signum, previous[signum])
        request_stop(signum)

    clear()
    for s in signums:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        clear()
