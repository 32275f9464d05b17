"""Ctrl-C, SIGTERM or SIGHUP during a local run: stop cleanly at a safe point, never half-way through publishing a
result.

A `timeout`, a closed terminal (SIGHUP), `kill` or a CI job being cancelled (SIGTERM) deserve what Ctrl-C
gets: the first of these signals only sets STOP.requested. The hosts' wait loop (hosts.run_hosts) sees it
within 50 ms and stops every host with SIGTERM (the steps clean up: Similarity checkpoints its completed rows,
Merge removes its staging folder, or finishes if it is already registering); run_local sees it between steps.
Publishing a finished step's outputs and saving the execution record are therefore never cut in half, and a
step whose hosts all finished is recorded as Succeeded. A second signal raises Stopped at once (the user
insists); hosts are then killed on the way out.

The hosts run in sessions of their own (so a terminal's Ctrl-C reaches the runner only, which stops them in
order); if the runner itself is killed outright (SIGKILL), they get SIGTERM from the kernel instead
(hosts.die_with_runner).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from pipeline.errors import Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.insisted = False  # a second signal: hosts are killed at once, not given their 120 s
        self.signum = signal.SIGINT

    def handler(self, signum, frame) -> None:
        if self.requested:
            self.insisted = True
            raise Stopped(self.signum, "stopped twice")
        self.requested, self.signum = True, signum

    def raise_if_requested(self) -> None:
        if self.requested:
            raise Stopped(self.signum, "stop requested")


STOP = StopRequest()


@contextlib.contextmanager
def graceful_sigint() -> Iterator[StopRequest]:
    """Install the handler of SIGINT, SIGTERM and SIGHUP for the duration of a run (main thread only; elsewhere
    signals never arrive)."""
    STOP.requested = STOP.insisted = False
    STOP.signum = signal.SIGINT
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = {signum: signal.signal(signum, STOP.handler) for signum in SIGNALS}
    try:
        yield STOP
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STOP.requested = STOP.insisted = False
