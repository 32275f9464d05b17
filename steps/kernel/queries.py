"""Queries mode's pass: query rows that are not corpus rows, each against every corpus row.

A `QueryPass` takes query rows [start, stop) (part of one query chunk file) and the whole corpus, column run by
column run (a "step", its products bounded so that a step lasts about a second and a stop waits for no more),
and yields one partial list covering the whole corpus: the exact top-k of each query row. It speaks the protocol
of blocking.Pass (`run`, `StepDone`, `snapshot`/`restore` between steps, `flush`), so steps/share.py checkpoints
and stops it with the very same code.

Exactness is the self-join's: the same selection (selection.py, compiled.py) over float32 product tiles, then the
canonical scores and the exact top-k from the candidates (exact.py), ties by lower corpus row.

The self rule. A query may carry one corpus row it must not have as a neighbour (`exclude`: the corpus row of its
own id). The pass computes the exact top-(k+1) of every query row and drops that row if it is there, else the
last: what remains is the exact top-k among the corpus without it (same order, same ties), with no change to the
compiled selection. Query rows are numbered from corpus.rows on inside the kernel, so no query row is ever
mistaken for a corpus row of the same index.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from .blocking import KernelConfig, PartialList, Plan, Snapshot, StepDone, _single_threaded_blas, _Work, default_threads
from .corpus import Corpus
from .exact import dot_error_bound, exact_top_k
from .selection import PAD_LOW, Candidates

STEP_FLOPS = 2e10  # a step's products: about a second on two cores, the longest a stop waits
MIN_STEP_COLUMNS = 512  # a step takes at least this many corpus rows (many query rows: small steps)
WHOLE_CORPUS = (0,)  # the column blocks a query list covers: one, the whole corpus


def query_width(k: int, corpus_rows: int) -> int:
    """Candidates buffered per query row (for the top-(k+1) the self rule needs): all corpus rows when the
    margin would leave out one or none (exact.py trusts a buffer of all but one column only for a self-join)."""
    width = KernelConfig(k + 1).width
    return max(corpus_rows, 1) if width >= corpus_rows - 1 else width


def query_passes(start: int, stop: int, config: KernelConfig, dim: int, corpus_rows: int) -> list[range]:
    """Query rows [start, stop) of one chunk file in passes whose candidate heaps fit the budget."""
    per_pass = max(1, Plan.from_budget(config.budget_bytes, dim, query_width(config.k, corpus_rows), 1).pass_rows)
    return [range(a, min(stop, a + per_pass)) for a in range(start, stop, per_pass)]


class QueryPass:
    rows_label = "query rows"  # what `blocks` counts, in log lines (a self-join pass counts block rows)

    def __init__(self, corpus: Corpus, vectors: np.ndarray, rows: range, exclude: np.ndarray, config: KernelConfig,
                 zero: np.ndarray | None = None, step_rows: int | None = None):
        """`step_rows`: the most corpus rows a step takes (the corpus grid's block rows; STEP_FLOPS bounds it too)."""
        if config.k < 1:
            raise ValueError("k must be >= 1")
        if corpus.rows >= PAD_LOW:
            raise ValueError(f"{corpus.rows} rows: the selection keys hold row indices below {PAD_LOW}")
        if vectors.shape != (len(rows), corpus.dim) or exclude.shape != (len(rows),):
            raise ValueError(f"query rows {vectors.shape} and exclusions {exclude.shape} do not fit rows "
                             f"[{rows.start}, {rows.stop}) of dimension {corpus.dim}")
        self.corpus, self.blocks, self.config, self.exclude = corpus, rows, config, exclude
        self.zero = corpus.zero_mask() if zero is None else zero  # the corpus's all-zero rows
        self.k_out, self.k = config.k, config.k + 1
        self.width = query_width(config.k, corpus.rows)
        self.workers = config.threads if config.threads > 0 else default_threads()
        self.plan = Plan.from_budget(config.budget_bytes, corpus.dim, self.width, self.workers)
        self.eps = dot_error_bound(corpus.dim)
        self.threshold = None if config.threshold is None else np.float32(config.threshold)
        self.admission_floor = np.float32(-np.inf) if self.threshold is None else np.float32(self.threshold - self.eps)
        first = corpus.rows + rows.start  # beyond every corpus row: never "itself"
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        query_zero = ~vectors.any(axis=1)
        # Enough query tiles that the workers admit into different heaps side by side.
        tile = max(1, min(self.plan.tile, -(-len(rows) // self.workers)))
        self.own = [Candidates(first + a, vectors[a:a + tile], self.width, self.zero, self.admission_floor,
                               own_zero=query_zero[a:a + tile]) for a in range(0, len(rows), tile)]
        # From the pass's rows, the dimension and step_rows only (never the budget or the cores): a checkpointed
        # pass resumes on another instance type with the same steps.
        columns = max(MIN_STEP_COLUMNS, int(STEP_FLOPS // max(2 * max(len(rows), 1) * max(corpus.dim, 1), 1)))
        columns = max(1, min(columns, step_rows or columns))
        self.steps = [(a, min(corpus.rows, a + columns)) for a in range(0, corpus.rows, columns)]
        self.next_step = 0
        self.work: _Work | None = None
        self.products_done = None  # never paused inside a step: a stop waits for the step's end

    # ---- snapshots -------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        keys = np.concatenate([c.keys for c in self.own]) if self.own else np.zeros((0, self.width), np.uint64)
        return Snapshot(self.next_step, keys)

    def restore(self, snapshot: Snapshot) -> None:
        keys, step = snapshot.keys, snapshot.next_step
        rows = len(self.blocks)
        if snapshot.done is not None or keys.shape != (rows, self.width) or not 0 <= step <= len(self.steps):
            raise ValueError(f"snapshot of shape {keys.shape} at step {step} does not fit this pass "
                             f"({rows} rows x {self.width}, {len(self.steps)} steps)")
        at = 0
        for c in self.own:
            c.restore_keys(keys[at: at + len(c.keys)])
            at += len(c.keys)
        self.next_step = step

    # ---- running ---------------------------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool] | None = None) -> Iterator[StepDone | PartialList]:
        """A StepDone after each step; once all are done, the pass's list (the exact top-k against the whole
        corpus). `stop` is not polled inside a step: steps are short (STEP_FLOPS) and the caller stops between."""
        self.work = _Work(ThreadPoolExecutor(self.workers), threading.Event())
        try:
            with _single_threaded_blas(self.workers > 1):
                yield from self._run()
        finally:
            self.work.abandon()

    def flush(self) -> list[PartialList]:
        return []  # no mirror lists: a query list is final only at the end

    def _run(self) -> Iterator[StepDone | PartialList]:
        scratch = threading.local()
        locks = {id(c): threading.Lock() for c in self.own}
        while self.next_step < len(self.steps):
            col0, col1 = self.steps[self.next_step]
            tiles = [(a, min(col1, a + self.plan.tile)) for a in range(col0, col1, self.plan.tile)]
            jobs = [self.work.submit(self._product, c, a, b, scratch, locks[id(c)]) for a, b in tiles for c in self.own]
            for job in jobs:
                job.result()
            self.next_step += 1
            yield StepDone(self.next_step - 1)
        columns = [(0, self.corpus.rows)]
        finals = [self.work.submit(exact_top_k, self, c.first, c.query, c.best_s, c.best_i, columns) for c in self.own]
        parts = [job.result() for job in finals]
        nb = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, self.k), np.int64)
        sc = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, self.k), np.float32)
        nb, sc = without_excluded(nb, sc, self.exclude)
        yield PartialList(self.blocks.start, self.blocks.stop, WHOLE_CORPUS, nb, sc)

    def _product(self, rows: Candidates, col0: int, col1: int, scratch, lock: threading.Lock) -> None:
        t = self.plan.tile
        if not hasattr(scratch, "scores"):
            scratch.scores = np.empty(t * t, dtype=np.float32)
        pieces = [b for _, b in self.corpus.blocks(col0, col1, col1 - col0)]  # two, across corpus chunks
        cols = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        S = scratch.scores[: len(rows.query) * len(cols)].reshape(len(rows.query), len(cols))
        np.matmul(rows.query, cols.T, out=S)
        with lock:
            rows.admit(S, col0, self.zero)


def without_excluded(nb: np.ndarray, sc: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From each row's exact top-(k+1): its excluded corpus row taken out if there, else the last one; order
    kept. The result is the exact top-k among the corpus without that row."""
    n, width = nb.shape
    drop = (nb == exclude[:, None]) & (exclude[:, None] >= 0)
    drop[~drop.any(axis=1), width - 1] = True
    keep = ~drop
    return nb[keep].reshape(n, width - 1), sc[keep].reshape(n, width - 1)
