"""Stopping a run on SIGTERM (a scheduler's preemption notice) or SIGINT (Ctrl-C) without losing work.

The first signal only sets a flag: the driver finishes the step it is in, writes a checkpoint and exits with
128 + the signal number (143 for SIGTERM, 130 for SIGINT), printing the command that resumes the run. A second
signal stops at once (KeyboardInterrupt), as Ctrl-C twice does elsewhere. Handlers are installed after Ray has
started (Ray's driver installs its own) and the previous ones are restored on exit.

A signal sent to the driver's whole process group (``timeout``, a closing terminal) does not stop the local Ray
under it: that runs in a session of its own (funrl/local_ray.py).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    """``with GracefulStop() as stop:`` ... ``if stop.requested: ...`` (SIGTERM and SIGINT)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.signum = signum
        print(
            f"\n[funrl] {signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> "GracefulStop":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
