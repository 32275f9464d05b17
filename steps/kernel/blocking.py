"""The kernel's driver: a host's passes over the grid (grid.py), each giving exact partial top-k lists.

A pass takes a contiguous run of block rows P (a host's share, or part of it when their candidate buffers would
not fit the memory budget) and their windows' tiles, column block by column block (a "step"). A tile (i, j)
serves both directions, so:

- the rows of P gather candidates over all their windows' columns (and the mirrors of P's own tiles): their
  lists are final for the pass once every step is done ("own" lists);
- the rows of a column block j outside P gather candidates among the rows of P whose window holds j: their
  list is final once step j is done (a "mirror" list).

Every list is exact for the columns it covers (selection.py picks candidates from float32 products, exact.py
scores them canonically), and says which column blocks it covers: Merge combines the lists of a row into its
top-k, and checks every column is covered exactly once. Between steps the pass can be snapshotted (its own
rows' candidates and the next step) and resumed from that snapshot, with the same result, bit for bit.
Order within a row: score descending, ties by lower row index. Padding: index -1, score NaN.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .corpus import Corpus
from ..order import PAD_INDEX, combine
from .exact import dot_error_bound, exact_top_k
from .grid import Grid
from .selection import PAD_LOW, Candidates

# Bytes of working memory per element of a (query rows x corpus rows) score tile: the float32 scores and the
# compiled pass's flags.
_TILE_BYTES_PER_ELEMENT = 8
_MAX_TILE = 1536
_STOP_POLL_SECONDS = 0.05  # how often a running step looks at its stop flag


@dataclass(frozen=True)
class KernelConfig:
    k: int  # neighbours per row
    threshold: float | None = None  # keep pairs scoring >= threshold (MinScore); None keeps every pair
    budget_bytes: int = 256 << 20  # working memory for score tiles and candidate buffers
    threads: int = 0  # workers; 0: every core this process may use

    @property
    def width(self) -> int:
        """Candidates buffered per row: k plus a margin, so rarely a row needs widening."""
        return self.k + max(8, self.k // 16)


@dataclass(frozen=True)
class Plan:
    """Block sizes derived from a memory budget, never from the number of rows."""

    tile: int        # a score tile is (tile x tile): query rows x corpus rows
    pass_rows: int   # own rows whose candidate buffers are held at once
    score_rows: int  # query rows rescored at once

    @classmethod
    def from_budget(cls, budget_bytes: int, dim: int, width: int, workers: int = 1) -> "Plan":
        # Half the budget for the workers' score tiles, half for the buffers (a uint64 key per candidate).
        # Tiles past ~1500 rows stop paying: the selection's pass over a tile then misses the cache.
        per_worker = budget_bytes // 2 // max(workers, 1) // _TILE_BYTES_PER_ELEMENT
        tile = int(min(_MAX_TILE, max(64, math.isqrt(per_worker))))
        pass_rows = int(max(1, budget_bytes // 2 // (8 * max(width, 1))))
        # Rescoring works on (rows, width, dim) float32 + float64 copies; small slices stay in cache.
        score = int(max(1, min(256, budget_bytes // max(24 * width * max(dim, 1), 1))))
        return cls(tile=tile, pass_rows=pass_rows, score_rows=score)


def default_threads() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class PartialList:
    """The exact top-k of rows [start, stop) among the corpus rows of column blocks `columns`."""

    start: int
    stop: int
    columns: tuple[int, ...]
    neighbors: np.ndarray  # int64 (rows, k), PAD_INDEX where fewer
    scores: np.ndarray  # float32 (rows, k), NaN where fewer


@dataclass(frozen=True)
class StepDone:
    """Step `step` of the pass is done: a snapshot taken now (Pass.snapshot) resumes at step + 1."""

    step: int


@dataclass(frozen=True)
class Paused:
    """run(stop=...) saw the stop inside step `step` and returned: a snapshot taken now resumes inside it."""

    step: int


@dataclass(frozen=True)
class Snapshot:
    """What resumes a pass: the next step and the own rows' candidate keys; inside a step (paused), also which of
    its products are done (`done`, one flag per product in the step's order) and its mirror rows' keys."""

    next_step: int
    keys: np.ndarray  # uint64 (own rows, width)
    done: np.ndarray | None = None  # bool (products of the step,), None between steps
    mirror_keys: np.ndarray | None = None  # uint64 (rows of the step's column block, width), mirror steps only
    tile: int = 0  # the product tiles `done` counts in (a mid-step snapshot resumes only with the same tiles)


def host_passes(grid: Grid, index: int, hosts: int, config: KernelConfig, dim: int) -> list[range]:
    """The passes of host `index` of `hosts`: its block rows, in runs whose buffers fit the budget."""
    own = grid.host_blocks(index, hosts)
    plan = Plan.from_budget(config.budget_bytes, dim, config.width, 1)
    per_pass = max(1, plan.pass_rows // grid.block)
    return [range(b, min(own.stop, b + per_pass)) for b in range(own.start, own.stop, per_pass)]


class Pass:
    """The tiles of block rows `blocks` (one pass), step by step; see the module docstring."""

    def __init__(self, corpus: Corpus, grid: Grid, blocks: range, config: KernelConfig,
                 zero: np.ndarray | None = None):
        if config.k < 1:
            raise ValueError("k must be >= 1")
        if corpus.rows >= PAD_LOW:
            raise ValueError(f"{corpus.rows} rows: the selection keys hold row indices below {PAD_LOW}")
        self.corpus, self.grid, self.blocks, self.config = corpus, grid, blocks, config
        self.zero = corpus.zero_mask() if zero is None else zero
        self.workers = config.threads if config.threads > 0 else default_threads()
        self.width = min(config.width, max(corpus.rows - 1, 1))
        self.plan = Plan.from_budget(config.budget_bytes, corpus.width, self.width, self.workers)
        self.eps = dot_error_bound(corpus.dot_terms)
        self.threshold = None if config.threshold is None else np.float32(config.threshold)
        self.admission_floor = np.float32(-np.inf) if self.threshold is None else np.float32(self.threshold - self.eps)
        # A sparse product's unstored pairs share no column: their score is exactly 0, canonical too, so with a
        # positive MinScore they are never listed and selection reads the product's stored values only.
        self.stored_only = corpus.kernel == "sparse" and self.threshold is not None and self.threshold > 0
        layout = grid.pass_layout(blocks)
        self.steps = list(layout.steps)  # the column blocks, in order
        self.sources = layout.mirrors  # step block outside the pass -> the pass's block rows it mirrors
        self.own_columns = layout.own  # own block row -> the column blocks its list covers
        self.own = [self._candidates(first, stop) for b in blocks for first, stop in self._tiles(*grid.span(b))]
        self.next_step = 0
        self.k = config.k
        self.work: _Work | None = None
        self._pending = None  # the last step's mirror list being scored: (column block, jobs)
        self._inside: tuple[np.ndarray, list[Candidates] | None] | None = None  # paused mid-step: (done, mirror)

    def _tiles(self, start: int, stop: int) -> list[tuple[int, int]]:
        t = self.plan.tile
        return [(a, min(stop, a + t)) for a in range(start, stop, t)]

    def _candidates(self, first: int, stop: int) -> Candidates:
        return Candidates(first, self.corpus.rows_of(first, stop), self.width, self.zero, self.admission_floor)

    # ---- snapshots -------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Valid after a StepDone or a Paused (call `flush` first: the lists handed out so far belong with it)."""
        keys = np.concatenate([c.keys for c in self.own]) if self.own else np.zeros((0, self.width), np.uint64)
        if self._inside is None:
            return Snapshot(self.next_step, keys)
        done, mirror = self._inside
        mirror_keys = None if mirror is None else np.concatenate([c.keys for c in mirror])
        return Snapshot(self.next_step, keys, done.copy(), mirror_keys, self.plan.tile)

    @property
    def products_done(self) -> np.ndarray | None:
        """Paused inside a step: which of its products are done (None between steps)."""
        return None if self._inside is None else self._inside[0]

    def restore(self, snapshot: Snapshot) -> None:
        """Continue from a snapshot of this very pass (same grid, blocks, k and width; mid-step, same tiles)."""
        rows = sum(len(c.keys) for c in self.own)
        keys, step = snapshot.keys, snapshot.next_step
        if keys.shape != (rows, self.width) or not 0 <= step <= len(self.steps):
            raise ValueError(f"snapshot of shape {keys.shape} at step {step} does not fit this pass "
                             f"({rows} rows x {self.width}, {len(self.steps)} steps)")
        inside = None
        if snapshot.done is not None:
            if step == len(self.steps) or snapshot.tile != self.plan.tile:
                raise ValueError(f"a snapshot inside step {step} with product tiles of {snapshot.tile} rows does "
                                 f"not fit this pass (tiles of {self.plan.tile} rows, {len(self.steps)} steps)")
            mirror = self._mirror_candidates(self.steps[step])
            tasks = len(self._step_tasks(self.steps[step], mirror))
            mirror_rows = 0 if mirror is None else sum(len(c.keys) for c in mirror)
            got_rows = 0 if snapshot.mirror_keys is None else len(snapshot.mirror_keys)
            if len(snapshot.done) != tasks or got_rows != mirror_rows:
                raise ValueError(f"a snapshot inside step {step} with {len(snapshot.done)} products and "
                                 f"{got_rows} mirror rows does not fit this pass ({tasks}, {mirror_rows})")
            at = 0
            for c in mirror or []:
                c.restore_keys(snapshot.mirror_keys[at: at + len(c.keys)])
                at += len(c.keys)
            inside = (snapshot.done.astype(bool), mirror)
        at = 0
        for c in self.own:
            c.restore_keys(keys[at: at + len(c.keys)])
            at += len(c.keys)
        self.next_step, self._inside = step, inside

    # ---- running ---------------------------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool] | None = None) -> Iterator[StepDone | Paused | PartialList]:
        """From the next step on: a StepDone after each step, each mirror list (its step's, or earlier), and
        once every step is done, the own lists (one per own block). At a StepDone the pass can be snapshotted:
        call `flush` first, for the mirror list of that step, which the snapshot's lists must include.
        `stop` is polled while a step's products run; once it says so, the pass pauses: a Paused, and the end."""
        self.work = _Work(ThreadPoolExecutor(self.workers), threading.Event())
        self._pending = None
        try:
            with _single_threaded_blas(self.workers > 1):
                yield from self._run(stop)
        finally:
            self.work.abandon()

    def flush(self) -> list[PartialList]:
        """The mirror list not handed out yet (the last step's), computed now."""
        lists = self._mirror_list(self._pending) if self._pending is not None else []
        self._pending = None
        return lists

    def _run(self, stop) -> Iterator[StepDone | Paused | PartialList]:
        work = self.work
        scratch = threading.local()  # one score tile per worker, reused: fresh ones cost page faults
        locks: dict[int, threading.Lock] = {}
        while self.next_step < len(self.steps):
            step = self.next_step
            j = self.steps[step]
            done, mirror = self._inside or (None, self._mirror_candidates(j))
            self._inside = None
            tasks = self._step_tasks(j, mirror)
            done = np.zeros(len(tasks), bool) if done is None else done
            jobs = {t: work.submit(self._product, a, c, mirrored, scratch, locks)
                    for t, (a, c, mirrored) in enumerate(tasks) if not done[t]}
            yield from self.flush()  # the previous step's mirror list, scored while this step's products run
            if not _finish(jobs, done, stop):
                self._inside = (done, mirror)
                yield Paused(step)
                return
            self.next_step = step + 1
            if mirror is not None:
                columns = [self.grid.span(i) for i in self.sources[j]]
                self._pending = (j, [work.submit(self._exact, c, columns) for c in mirror])
            yield StepDone(step)  # own heaps are consistent here: a snapshot may be taken
        yield from self.flush()
        finals = [(c, work.submit(self._exact, c, [self.grid.span(b) for b in self.own_columns[self._block(c)]]))
                  for c in self.own]
        for b in self.blocks:
            parts = [job.result() for c, job in finals if self._block(c) == b]
            start, stop = self.grid.span(b)
            yield PartialList(start, stop, tuple(self.own_columns[b]), np.concatenate([p[0] for p in parts]),
                              np.concatenate([p[1] for p in parts]))

    def _mirror_candidates(self, j: int) -> list[Candidates] | None:
        """Fresh candidates for the rows of column block j, when it is outside the pass (a mirror step)."""
        return None if j in self.blocks else [self._candidates(a, b) for a, b in self._tiles(*self.grid.span(j))]

    def _mirror_list(self, pending) -> list[PartialList]:
        j, jobs = pending
        parts = [job.result() for job in jobs]
        start, stop = self.grid.span(j)
        return [PartialList(start, stop, tuple(self.sources[j]), np.concatenate([p[0] for p in parts]),
                            np.concatenate([p[1] for p in parts]))]

    def list_rows(self) -> int:
        """Rows of the lists still to come from this pass: the remaining steps' mirror lists and its own lists."""
        rows = lambda b: self.grid.span(b)[1] - self.grid.span(b)[0]  # noqa: E731
        return sum(rows(j) for j in self.steps[self.next_step:] if j not in self.blocks) + \
            sum(rows(b) for b in self.blocks)

    def _block(self, c: Candidates) -> int:
        return c.first // self.grid.block

    def _step_tasks(self, j: int, mirror: list[Candidates] | None):
        """The step's (row candidates, column candidates, mirrored?) products, ordered so that workers side by
        side hold different candidates' locks."""
        columns = mirror if mirror is not None else [c for c in self.own if self._block(c) == j]
        rows = [c for c in self.own if j in self.grid.window(self._block(c))]
        tasks = []
        for a_pos, a in enumerate(rows):
            same_block = self._block(a) == j
            for c_pos, c in enumerate(columns):
                if same_block and c.first < a.first:
                    continue  # inside block j each pair of tiles once: the one with a <= c
                tasks.append(((c_pos - a_pos) % max(len(columns), 1), a_pos, a, c, not (same_block and c is a)))
        tasks.sort(key=lambda t: (t[0], t[1]))
        return [(a, c, mirrored) for _, _, a, c, mirrored in tasks]

    def _product(self, rows: Candidates, cols: Candidates, mirrored: bool, scratch, locks) -> None:
        if self.stored_only:  # sparse rows, MinScore > 0: the product fused with selection, pairs sharing a column
            if not hasattr(scratch, "colmap"):
                scratch.colmap = np.full(self.corpus.shared, -1, dtype=np.int64)
            admit = lambda **mirror: rows.admit_product(cols, cols.first, self.zero, scratch.colmap, **mirror)  # noqa
        else:
            t = self.plan.tile
            if not hasattr(scratch, "scores"):
                scratch.scores = np.empty(t * t, dtype=np.float32)
            S = scratch.scores[: rows.query.shape[0] * cols.query.shape[0]].reshape(rows.query.shape[0],
                                                                                      cols.query.shape[0])
            self.corpus.product(rows.query, cols.query, S)
            admit = lambda **mirror: rows.admit(S, cols.first, self.zero, **mirror)  # noqa: E731
        if not mirrored:
            with _lock(locks, rows):
                admit()
            return
        first, second = sorted((rows, cols), key=lambda c: c.first)
        with _lock(locks, first), _lock(locks, second):
            admit(mirror=cols)

    def _exact(self, c: Candidates, columns: list[tuple[int, int]]):
        return exact_top_k(self, c.first, c.query, c.best_s, c.best_i, columns)


def _finish(jobs: dict, done: np.ndarray, stop: Callable[[], bool] | None) -> bool:
    """Wait for a step's products, marking each in `done`; True once all are, False if `stop` said to pause
    first (the queued ones dropped, the running ones finished and marked)."""
    pending = set(jobs.values())
    index = {job: t for t, job in jobs.items()}
    while pending:
        finished, pending = wait(pending, timeout=None if stop is None else _STOP_POLL_SECONDS,
                                 return_when=FIRST_EXCEPTION)
        for job in finished:
            job.result()  # re-raises a worker's error here
            done[index[job]] = True
        if pending and stop is not None and stop():
            for job in pending:
                job.cancel()
            wait(pending)
            for job in pending:
                if not job.cancelled():
                    job.result()
                    done[index[job]] = True
            return bool(done.all())  # the last ones may have been running: then the step is complete
    return True


def _lock(locks: dict, c: Candidates) -> threading.Lock:
    return locks.setdefault(id(c), threading.Lock())


def all_pairs(corpus: Corpus, config: KernelConfig, hosts: int = 1,
              block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's top-k, computed the way `hosts` similarity hosts compute it, combined as Merge combines it
    (in memory: for tests and benchmarks). `block` overrides the grid's block rows."""
    grid = Grid(corpus.rows, block) if block else Grid.for_rows(corpus.rows)
    zero = corpus.zero_mask()
    by_block: dict[int, list[PartialList]] = {}
    for h in range(hosts):
        for blocks in host_passes(grid, h, hosts, config, corpus.width):
            for event in Pass(corpus, grid, blocks, config, zero).run():
                if isinstance(event, PartialList):
                    by_block.setdefault(event.start // grid.block, []).append(event)
    parts = [combine([(p.neighbors, p.scores) for p in by_block[b]], config.k) for b in range(grid.blocks)] \
        if corpus.rows else []
    if not parts:
        return np.zeros((0, config.k), np.int64), np.zeros((0, config.k), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class _Work:
    """The workers, and the flag that tells them to drop what is queued."""

    pool: ThreadPoolExecutor
    abandoned: threading.Event

    def submit(self, fn, *args):
        def unless_abandoned():
            if self.abandoned.is_set():
                raise _Abandoned()
            return fn(*args)
        return self.pool.submit(unless_abandoned)

    def check(self) -> None:
        """Called inside long jobs (a widened row) between slices."""
        if self.abandoned.is_set():
            raise _Abandoned()

    def abandon(self) -> None:
        self.abandoned.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Abandoned(Exception):
    """A job that found the work abandoned: nobody reads its result."""


@contextlib.contextmanager
def _single_threaded_blas(wanted: bool):
    """Hold BLAS to one thread while our workers each run their own products (no oversubscription).

    threadpoolctl is the standard tool for this (scikit-learn does the same); without it BLAS keeps its threads.
    """
    if not wanted:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


__all__ = ["PAD_INDEX", "KernelConfig", "Pass", "PartialList", "Paused", "Plan", "Snapshot", "StepDone", "all_pairs",
           "default_threads", "host_passes"]
