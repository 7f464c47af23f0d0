"""Stopping a training run cleanly: Ctrl-C and SIGTERM finish the current step, save a checkpoint and exit 0
(a second Ctrl-C quits at once, without one). DataLoader workers ignore both signals, so that only the main
process decides when to stop."""
from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequest:
    """A context in which SIGINT and SIGTERM set ``requested`` instead of stopping the process."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt          # a second Ctrl-C: stop now, without a checkpoint
        self.requested = True
        print(f"\n{signal.Signals(number).name}: finishing this step, saving a checkpoint "
              f"(Ctrl-C again to quit without saving)", flush=True)

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def quiet_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop, so workers keep going
    # (a worker that dies on SIGINT makes the DataLoader raise before the checkpoint is saved).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
