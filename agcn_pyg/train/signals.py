"""Graceful stop on SIGINT / SIGTERM (Ctrl-C, ``kill``, a cluster's preemption)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

__all__ = ["StopSignal"]


class StopSignal:
    """Turns SIGINT / SIGTERM into a flag the training loop polls, so it can stop after the
    current step and write a checkpoint. A second signal raises :class:`KeyboardInterrupt`
    at once (checkpoints are atomic, so the last one on disk stays valid).

    Use as a context manager; outside the main thread it installs nothing. Processes forked
    while it is installed (DataLoader workers, which a terminal's Ctrl-C reaches too) ignore
    the signal: the process that installed it stops them, and says so once.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by the signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGTERM)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked worker: its parent stops the run
            return
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.signum = signum
        print(f"\nReceived {signal.Signals(signum).name}: stopping after the current step "
              f"and writing a checkpoint (send it again to stop at once).",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
