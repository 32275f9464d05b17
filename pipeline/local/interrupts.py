"""Ctrl-C during a local run: stop cleanly at a safe point, never half-way through publishing a result.

The first SIGINT only sets STOP.requested. The hosts' wait loop (hosts.run_hosts) sees it within 50 ms and
stops every host with SIGTERM (the steps clean up: Similarity checkpoints its completed rows, Merge removes
its staging folder, or finishes if it is already registering); run_local sees it between steps. Publishing
a finished step's outputs and saving the execution record are therefore never cut in half, and a step whose
hosts all finished is recorded as Succeeded. A second SIGINT raises KeyboardInterrupt at once (the user
insists); hosts are then killed on the way out.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.insisted = False  # a second Ctrl-C: hosts are killed at once, not given their 120 s

    def handler(self, signum, frame) -> None:
        if self.requested:
            self.insisted = True
            raise KeyboardInterrupt("interrupted twice")
        self.requested = True

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt("stop requested")


STOP = StopRequest()


@contextlib.contextmanager
def graceful_sigint() -> Iterator[StopRequest]:
    """Install the handler for the duration of a run (main thread only; elsewhere SIGINT never arrives)."""
    STOP.requested = STOP.insisted = False
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = signal.signal(signal.SIGINT, STOP.handler)
    try:
        yield STOP
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP.requested = STOP.insisted = False
