"""The kernel's driver: for the query rows, their exact top-k among all corpus rows, in memory-bounded blocks.

Exactness and determinism come from a split between *selection* (steps/kernel/selection.py: float32 block
products, fast BLAS, each row keeping a buffer of its best k + margin approximate candidates) and *exact scoring*
(steps/kernel/exact.py: canonical scores of the buffered candidates, widening the rare rows whose buffer may
miss a near-tie). The output is bit-identical whatever the block shapes, BLAS kernels, thread counts or host
splits. Order within a row: score descending, ties by lower row index. Padding: index -1, score NaN.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .corpus import Corpus, QueryRows
from .exact import dot_error_bound, exact_top_k
from .selection import PAD_LOW, Candidates

# Bytes of working memory per element of a (query rows x corpus rows) score tile: the float32 scores, the
# bool compare mask, and room for the survivors' indices (normally a small fraction of the tile).
_TILE_BYTES_PER_ELEMENT = 16
_MAX_TILE = 1536


@dataclass(frozen=True)
class KernelConfig:
    k: int  # neighbours per row
    threshold: float | None = None  # keep pairs scoring >= threshold (MinScore); None keeps every pair
    budget_bytes: int = 256 << 20  # working memory for score tiles and candidate buffers
    threads: int = 0  # workers; 0: every core this process may use


@dataclass(frozen=True)
class Plan:
    """Block sizes derived from a memory budget, never from the number of rows."""

    tile: int        # a score tile is (tile x tile): query rows x corpus rows
    group_rows: int  # query rows whose selection buffers are held at once (pairs inside a group are computed once)
    score_rows: int  # query rows rescored at once

    @classmethod
    def from_budget(cls, budget_bytes: int, dim: int, width: int, total_rows: int, workers: int = 1) -> "Plan":
        # Half the budget for the workers' score tiles, half for the group's buffers (float32 score + int64
        # index). Tiles past ~1500 rows stop paying: the selection's pass over a tile then misses the cache.
        per_worker = budget_bytes // 2 // max(workers, 1) // _TILE_BYTES_PER_ELEMENT
        tile = int(min(_MAX_TILE, max(64, math.isqrt(per_worker))))
        buffers = budget_bytes // 2 // (12 * max(width, 1))
        group = int(max(tile, buffers // tile * tile))
        # Rescoring works on (rows, width, dim) float32 + float64 copies; small slices stay in cache.
        score = int(max(1, min(256, budget_bytes // max(24 * width * max(dim, 1), 1))))
        return cls(tile=tile, group_rows=group, score_rows=score)


def default_threads() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Search:
    """What every block of one top_k call shares."""

    corpus: Corpus
    zero: np.ndarray  # all-zero rows: no neighbours, nobody's neighbour
    k: int
    threshold: np.float32 | None
    eps: float  # dot_error_bound(dim): how far a float32 product may be from the true one
    admission_floor: np.float32  # selection never needs a pair below it: it cannot reach the threshold
    width: int  # candidates buffered per row: k + margin
    plan: "Plan"
    work: "_Work"
    workers: int


def top_k(corpus: Corpus, queries: QueryRows, config: KernelConfig,
          zero: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Top-k neighbours of the query rows among all corpus rows.

    Yields (first_row, neighbors int64 (n, k), scores float32 (n, k)) per row tile, in row order, as soon as
    the tile is final: a tile takes one window of products (see _group), so a caller can checkpoint every
    few seconds whatever the share's size. The work runs on `config.threads` workers, each doing its own
    products with BLAS held to one thread, so selection runs on every core too, not only the matrix products.
    `zero` (the corpus's all-zero rows) may be passed in when known.

    Closing the generator early (an exception in the caller, SIGTERM, Ctrl-C) abandons the queued work at
    once: the workers finish the product in hand (milliseconds) and take nothing more.
    """
    k = config.k
    if k < 1:
        raise ValueError("k must be >= 1")
    if corpus.rows >= PAD_LOW:
        raise ValueError(f"{corpus.rows} rows: the selection keys hold row indices below {PAD_LOW}")
    zero = corpus.zero_mask() if zero is None else zero
    eps = dot_error_bound(corpus.dim)
    margin = max(8, k // 16)
    width = min(k + margin, max(corpus.rows - 1, 1))
    workers = config.threads if config.threads > 0 else default_threads()
    plan = Plan.from_budget(config.budget_bytes, corpus.dim, width, corpus.rows, workers)
    threshold = None if config.threshold is None else np.float32(config.threshold)
    floor = np.float32(-np.inf) if threshold is None else np.float32(threshold - eps)
    search = _Search(corpus, zero, k, threshold, eps, floor, width, plan,
                     _Work(ThreadPoolExecutor(workers), threading.Event()), workers)
    try:
        with _single_threaded_blas(workers > 1):
            for g0 in range(queries.start, queries.stop, plan.group_rows):
                yield from _group(search, g0, min(queries.stop, g0 + plan.group_rows))
    finally:
        search.work.abandon()


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


def _group(search: "_Search", g0: int, g1: int):
    """Query rows [g0, g1) in row tiles, yielded in order as each becomes final: every pair inside the group once.

    Tiles are taken in windows of `workers` tiles. A window's products are: each of its tiles a against the
    group's tiles b >= a (the product of a < b serves both: S for a's rows, S.T for b's rows) and against every
    column outside the group. Once they are done, the window's tiles have seen every column (their pairs with
    earlier tiles came as mirrors from earlier windows), so they are scored and yielded while the next window
    runs. A later window never touches an earlier window's tiles. Within a window the products are ordered
    column by column, so workers side by side update different tiles (each tile has its own lock). The order of
    updates does not change the result: a tile's buffer ends up holding its rows' best approximate candidates
    whatever the order, and _score makes them exact.
    """
    corpus, zero, plan, work, workers = search.corpus, search.zero, search.plan, search.work, search.workers
    t = plan.tile
    tiles = [Candidates(first, block, search.width, zero, search.admission_floor) for first, block in
             ((f, np.ascontiguousarray(b)) for f, b in corpus.blocks(g0, g1, t))]
    locks = [threading.Lock() for _ in tiles]
    scratch = threading.local()  # one score tile and mask per worker, reused: fresh ones cost page faults
    outside = [(col0, block) for lo, hi in ((0, g0), (g1, corpus.rows)) for col0, block in corpus.blocks(lo, hi, t)]

    def product(a: int, cols: np.ndarray, col0: int, b: int | None) -> None:
        if not hasattr(scratch, "scores"):
            scratch.scores, scratch.mask = np.empty(t * t, dtype=np.float32), np.empty(t * t, dtype=bool)
        rows = tiles[a]
        S = scratch.scores[: len(rows.query) * len(cols)].reshape(len(rows.query), len(cols))
        np.matmul(rows.query, cols.T, out=S)
        with locks[a]:
            rows.update(S, col0, zero, scratch.mask, mirrored=False)
        if b is not None:
            with locks[b]:
                tiles[b].update(S, rows.first, zero, scratch.mask, mirrored=True)

    def finish(a: int):
        tiles[a].flush()
        r = tiles[a]
        return exact_top_k(search, r.first, r.query, r.best_s, r.best_i)

    def products(window: range) -> list:
        jobs = []
        for b in range(window.start, len(tiles)):  # the group's columns, from the window on
            jobs += [work.submit(product, a, tiles[b].query, tiles[b].first, b if b != a else None)
                     for a in window if a <= b]
        for col0, block in outside:
            jobs += [work.submit(product, a, block, col0, None) for a in window]
        return jobs

    windows = [range(w, min(w + max(workers, 1), len(tiles))) for w in range(0, len(tiles), max(workers, 1))]
    running = products(windows[0]) if windows else []
    for i, window in enumerate(windows):
        for job in running:
            job.result()  # re-raises a worker's error here
        # Scoring is queued ahead of the next window's products: the tiles are yielded while those run.
        scored = [work.submit(finish, a) for a in window]
        running = products(windows[i + 1]) if i + 1 < len(windows) else []
        for a, job in zip(window, scored):
            yield (tiles[a].first, *job.result())
            tiles[a] = None  # its buffers are no longer needed
