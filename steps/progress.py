"""A similarity host's progress lines, at a steady cadence.

One line shape (steps/contract.py PROGRESS_LINE), parsed by the local runner (ALLPAIRS_FAULTS `at=P%`) and, in
the cloud, by the training step's metric definitions:

    algo-1: progress 37.5% rows 4608/12288 rows/s 2210 GFLOP/s 28.3 eta 3 s

`rows` counts this host's block rows, each finished step worth its share of them, resumed ones included;
rows/s and GFLOP/s count only what is computed here (the caller gives the floating point operations a row
costs).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from .contract import DEFAULT_PROGRESS_SECONDS, PROGRESS_SECONDS_ENV


def read_cadence() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV) or DEFAULT_PROGRESS_SECONDS))
    except ValueError:
        return DEFAULT_PROGRESS_SECONDS


class Progress:
    def __init__(self, total: int, flops_per_row: float, log: Callable[[str], None],
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.flops_per_row, self.log, self.clock = total, flops_per_row, log, clock
        self.every = read_cadence() if every is None else every
        self.began = clock()
        self.done = self.computed = 0
        self.last = None

    def resumed(self, rows: int) -> None:
        self.done += rows

    def computed_rows(self, rows: int) -> None:
        self.done += rows
        self.computed += rows
        now = self.clock()
        if self.last is None or now - self.last >= self.every or self.done >= self.total:
            self.report(now)

    def report(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.last = now
        seconds = max(now - self.began, 1e-9)
        rate = self.computed / seconds
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        self.log(f"progress {percent:.1f}% rows {self.done}/{self.total} rows/s {rate:.0f} "
                 f"GFLOP/s {rate * self.flops_per_row / 1e9:.1f} eta {eta:.0f} s")
