"""Faults a similarity host triggers itself at an exact point of its checkpointing (local runner only).

The local runner's ALLPAIRS_FAULTS (pipeline/local/faults.py) hands a host ALLPAIRS_HOST_FAULT:
`after-checkpoints=N` kills it right after its Nth checkpoint write, `during-checkpoint=N` halfway through
writing the Nth (leaving a torn temp file), `hang-after-checkpoints=N` stalls it after the Nth, as a hung host
does; `;signal=TERM` sends SIGTERM instead of SIGKILL. The host first prints contract.FAULT_MARKER, so the
runner knows the death was on purpose and restarts it. Faults at arbitrary moments are the runner's own.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .contract import FAULT_MARKER, HOST_FAULT_ENV
from .errors import StepError, Terminated

Log = Callable[[str], None]


@dataclass
class Fault:
    when: str  # "after" | "during" | "hang"
    count: int
    sig: int = signal.SIGKILL
    fired: bool = False

    def after_checkpoint(self, written: int, rows: str, log: Log) -> None:
        """Called once the `written`-th checkpoint is in place."""
        if not self.fired and self.when in ("after", "hang") and written == self.count:
            self._fire(f"{'stalled' if self.when == 'hang' else 'killed'} after checkpoint {written} ({rows})", log)

    def during_checkpoint(self, writing: int, rows: str, log: Log) -> None:
        """Called halfway through writing the `writing`-th checkpoint."""
        if not self.fired and self.when == "during" and writing == self.count:
            self._fire(f"killed while writing checkpoint {writing} ({rows})", log)

    def _fire(self, what: str, log: Log) -> None:
        self.fired = True
        if self.when == "hang":
            def stopped(signum, frame):  # the host's own handler only flags a stop for its next step
                raise Terminated(f"{what} by an injected fault")
            signal.signal(signal.SIGTERM, stopped)  # before the marker: a stop may follow it at once
            log(f"{FAULT_MARKER} {what}; hanging until stopped")
            while True:
                time.sleep(3600)
        log(f"{FAULT_MARKER} {what}; sending {signal.Signals(self.sig).name} to this host")
        sys.stdout.flush()
        os.kill(os.getpid(), self.sig)
        if self.sig == signal.SIGKILL:
            time.sleep(5)  # never returns: SIGKILL is delivered at once
        # SIGTERM: its handler has run (a signal to oneself is handled before os.kill returns to Python code)


def read_fault() -> Fault | None:
    raw = os.environ.get(HOST_FAULT_ENV, "").strip()
    if not raw:
        return None
    match = re.fullmatch(r"(after-checkpoints|during-checkpoint|hang-after-checkpoints)=(\d+)(?:;signal=(KILL|TERM))?",
                         raw)
    if not match or int(match[2]) < 1:
        raise StepError(f"{HOST_FAULT_ENV}={raw!r}: expected after-checkpoints=N, during-checkpoint=N or "
                        "hang-after-checkpoints=N (N >= 1), optionally ;signal=KILL|TERM; the local runner sets it "
                        "from ALLPAIRS_FAULTS")
    sig = signal.SIGTERM if match[3] == "TERM" else signal.SIGKILL
    return Fault(match[1].split("-")[0], int(match[2]), sig)
