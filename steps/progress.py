"""Progress lines at a steady cadence, for every step: the shape is steps.contract.PROGRESS_LINE.

    algo-1: progress 37.5% rows 4608/12288 rows/s 2210 GFLOP/s 28.3 eta 3 s

The local runner parses them (ALLPAIRS_FAULTS `at=P%`, the live display, the summary); in the cloud the
training step's metric definitions turn the similarity hosts' lines into Studio charts, and the processing
steps' lines are in their logs. `rows` counts the step's (or host's) rows, resumed rows included; rows/s and
GFLOP/s count only the rows computed here (a similarity host counts its block rows, each finished step worth
its share; the caller gives the floating point operations a row costs). A line is printed every
ALLPAIRS_PROGRESS_SECONDS seconds (default 5; 0: one per unit of work), at the first unit and at the last.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Iterator

from .contract import DEFAULT_PROGRESS_SECONDS, PROGRESS_SECONDS_ENV, progress_line


def read_cadence() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV) or DEFAULT_PROGRESS_SECONDS))
    except ValueError:
        return DEFAULT_PROGRESS_SECONDS


class Progress:
    """`total` rows to do; `flops_per_row` (None: no GFLOP/s) ; `estimated`: the total is a guess that the
    count may pass (the line then says `~` and stays under 100% until finish())."""

    def __init__(self, total: int, flops_per_row: float | None, log: Callable[[str], None],
                 every: float | None = None, clock: Callable[[], float] = time.monotonic, estimated: bool = False):
        self.total, self.flops_per_row, self.log, self.clock = total, flops_per_row, log, clock
        self.every = read_cadence() if every is None else every
        self.estimated = estimated
        self.began = clock()
        self.done = self.computed = 0
        self.last = None

    def resumed(self, rows: int) -> None:
        self.done += rows

    def computed_rows(self, rows: int) -> None:
        self.done += rows
        self.computed += rows
        now = self.clock()
        if self.last is None or now - self.last >= self.every or (self.done >= self.total and not self.estimated):
            self.report(now)

    def finish(self) -> None:
        """All rows are done: the total is now known exactly; say so unless the last line already did."""
        if self.estimated or self.last is None or self.done != self.total:
            self.total, self.estimated = self.done, False
            self.report()

    def report(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.last = now
        seconds = max(now - self.began, 1e-9)
        rate = self.computed / seconds
        eta = max(self.total - self.done, 0) / rate if rate > 0 else None
        gflops = rate * self.flops_per_row / 1e9 if self.flops_per_row is not None else None
        self.log(progress_line(self.done, self.total, rate, eta, gflops, self.estimated))


def tracked(batches: Iterable, progress: Progress, rows: Callable[[object], int]) -> Iterator:
    """The batches, unchanged, counting `rows(batch)` of each into `progress` as it is handed on."""
    for batch in batches:
        yield batch
        progress.computed_rows(rows(batch))
