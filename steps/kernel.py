"""The similarity kernel: for a range of query rows, their top-k neighbours among all rows, in blocks.

Exactness and determinism come from a split between *selection* and *scoring*:

- Selection runs on float32 block products (fast BLAS). Each row keeps a buffer of its best `k + margin`
  approximate scores.
- Scoring recomputes every buffered candidate's score canonically: the float32 rounding of the correctly
  rounded float64 dot product of the two float32 vectors. That value depends on the two vectors only, not on
  block shapes, BLAS kernels, thread counts or host splits, so the output is bit-identical whatever they are.
  It is computed with float64 BLAS (any summation order, error <= gamma_D in float64) and accepted when no
  float32 rounding boundary lies within that error; otherwise (about one pair in a million) an exact sum
  (math.fsum) decides.
- A float32 dot product of two unit vectors of dimension D is within `eps = gamma_D` of the true value
  (standard rounding analysis). Every true top-k neighbour therefore has an approximate score of at least
  `a_k - 2*eps`, where `a_k` is the k-th best approximate score. If a row's buffer holds everything down to
  that bound, the exact top-k is inside it; if not (many near-ties), that row is widened: its candidates
  above the bound are gathered from a full pass and scored canonically. Correct for any data.

Order within a row: score descending, ties by lower row index. Padding: index -1, score NaN.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

PAD_INDEX = -1
# Bytes of working memory per element of a (query rows x corpus rows) score tile: the float32 scores, the
# bool compare mask, and room for the survivors' indices (normally a small fraction of the tile).
_TILE_BYTES_PER_ELEMENT = 16
_MAX_TILE = 1536


@dataclass(frozen=True)
class Corpus:
    """All rows, as a list of row-contiguous float32 chunks (usually memory-mapped files)."""

    chunks: Sequence[np.ndarray]
    starts: np.ndarray = field(init=False, repr=False, compare=False)  # each chunk's first row, and the total

    def __post_init__(self):
        dims = {c.shape[1] for c in self.chunks}
        if len(dims) > 1:
            raise ValueError(f"chunks have different dimensions: {sorted(dims)}")
        # Computed once: blocks() and take() consult it on every call.
        object.__setattr__(self, "starts", np.cumsum([0] + [len(c) for c in self.chunks]))

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return self.chunks[0].shape[1] if self.chunks else 0

    def blocks(self, start: int, stop: int, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_row, float32 block) covering [start, stop) in pieces of at most `size` rows."""
        starts = self.starts
        pos = start
        while pos < stop:
            c = int(np.searchsorted(starts, pos, side="right") - 1)
            end = min(stop, pos + size, int(starts[c + 1]))
            yield pos, np.asarray(self.chunks[c][pos - starts[c]: end - starts[c]], dtype=np.float32)
            pos = end

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at arbitrary global indices (any shape), as float32 of shape index.shape + (dim,)."""
        if len(self.chunks) == 1:
            return np.take(self.chunks[0], index, axis=0)
        flat = index.reshape(-1)
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        which = np.searchsorted(self.starts, flat, side="right") - 1
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.chunks[c][flat[sel] - self.starts[c]]
        return out.reshape(index.shape + (self.dim,))

    def zero_mask(self, block_rows: int = 65536) -> np.ndarray:
        """True for all-zero rows: they have no direction, so no neighbours and never anyone's neighbour."""
        mask = np.empty(self.rows, dtype=bool)
        for first, block in self.blocks(0, self.rows, block_rows):
            mask[first: first + len(block)] = ~block.any(axis=1)
        return mask


def dot_error_bound(dim: int) -> float:
    """Bound on |float32 dot - exact dot| for vectors of norm <= 1 (gamma_D, with slack for the norms)."""
    u = 2.0 ** -24
    n = max(dim, 1) + 2
    return 1.01 * n * u / (1 - n * u) + 1e-7


def canonical_scores(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32(RN64(q . c)) for each pair: depends on the two vectors only, however it is computed.

    query: (n, D) float32; candidates: (n, m, D) float32 -> (n, m) float32.
    """
    q64 = query.astype(np.float64)
    c64 = candidates.astype(np.float64)
    fast = np.matmul(c64, q64[:, :, None])[..., 0]
    # |fast - exact| <= gamma_D * |q| |c| (any summation order); the correctly rounded float64 is within half
    # an ulp more. RN32 is constant between consecutive float32 midpoints: if none lies that close, fast's
    # float32 rounding is the canonical one.
    norms = np.sqrt(np.einsum("nd,nd->n", q64, q64))[:, None] * np.sqrt(np.einsum("nmd,nmd->nm", c64, c64))
    d = query.shape[-1] + 2
    error = 1.01 * d * 2.0**-53 / (1 - d * 2.0**-53) * norms + np.abs(fast) * 2.0**-52 + 2.0**-1000
    out = fast.astype(np.float32)
    up = (out.astype(np.float64) + np.nextafter(out, np.float32(np.inf)).astype(np.float64)) / 2
    down = (out.astype(np.float64) + np.nextafter(out, np.float32(-np.inf)).astype(np.float64)) / 2
    close = (np.abs(fast - up) <= error) | (np.abs(fast - down) <= error)
    for i, j in zip(*np.nonzero(close)):
        # Products of float32 values are exact in float64; fsum returns their correctly rounded sum.
        out[i, j] = np.float32(math.fsum((q64[i] * c64[i, j]).tolist()))
    return out


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


def top_k(
    corpus: Corpus,
    start: int,
    stop: int,
    k: int,
    min_score: float | None = None,
    budget_bytes: int = 256 << 20,
    zero: np.ndarray | None = None,
    threads: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Top-k neighbours of rows [start, stop) among all rows.

    Yields (first_row, neighbors int64 (n, k), scores float32 (n, k)) per row tile, in row order, as soon as
    the tile is final: a tile takes one window of products (see _group), so a caller can checkpoint every
    few seconds whatever the share's size. `min_score` (inclusive) drops pairs scoring below it. The work runs
    on `threads` workers (0: every core this process may use), each doing its own products with BLAS held to
    one thread, so selection runs on every core too, not only the matrix products.

    Closing the generator early (an exception in the caller, SIGTERM, Ctrl-C) abandons the queued work at
    once: the workers finish the product in hand (milliseconds) and take nothing more.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if corpus.rows >= _PAD_LOW:
        raise ValueError(f"{corpus.rows} rows: the selection keys hold row indices below {_PAD_LOW}")
    zero = corpus.zero_mask() if zero is None else zero
    eps = dot_error_bound(corpus.dim)
    margin = max(8, k // 16)
    width = min(k + margin, max(corpus.rows - 1, 1))
    workers = threads if threads > 0 else default_threads()
    plan = Plan.from_budget(budget_bytes, corpus.dim, width, corpus.rows, workers)
    threshold = None if min_score is None else np.float32(min_score)
    # Selection never needs a pair below this: it cannot reach the threshold even with rounding error.
    floor = np.float32(-np.inf) if threshold is None else np.float32(threshold - eps)
    work = _Work(ThreadPoolExecutor(workers), threading.Event())
    try:
        with _single_threaded_blas(workers > 1):
            for g0 in range(start, stop, plan.group_rows):
                g1 = min(stop, g0 + plan.group_rows)
                yield from _group(corpus, g0, g1, width, k, zero, floor, threshold, eps, plan, work, workers)
    finally:
        work.abandon()


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


class _Rows:
    """Selection state of one tile of query rows: the `width` best approximate scores seen so far per row.

    `thr` is each row's admission bar: the worst buffered score once the buffer is full (a new candidate
    below it cannot enter), and never below `floor`. Zero rows get +inf: they have no neighbours.
    """

    def __init__(self, first: int, query: np.ndarray, width: int, zero: np.ndarray, floor: np.float32):
        n = len(query)
        self.first, self.query, self.width, self.floor = first, query, width, floor
        # One uint64 key a candidate: its score's sortable bits above its row index, so merging is one
        # partition of one array (no argpartition + gathers of two).
        self.keys = np.full((n, width), _PAD_KEY, dtype=np.uint64)
        self.thr = np.where(zero[first: first + n], np.float32(np.inf), floor).astype(np.float32)
        self.full = zero[first: first + n].copy()  # rows whose bar comes from a full buffer (or zero rows)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # survivors not merged yet
        self.pending_count = 0

    def update(self, S: np.ndarray, col0: int, zero: np.ndarray, scratch: np.ndarray, mirrored: bool) -> None:
        """Admit candidates from a C-contiguous product tile whose rows (or, if `mirrored`, columns) are ours.

        The tile's other axis is corpus rows col0, col0+1, ...
        """
        n, m = (S.shape[1], S.shape[0]) if mirrored else S.shape
        thr = self.thr
        if not self.full.all():
            thr = np.where(self.full, thr, np.maximum(thr, self._estimate(S, col0, zero, mirrored)))
        # One compare over the tile in memory order, then only the few survivors are touched (no per-tile sort).
        mask = scratch[: n * m].reshape(S.shape)
        np.greater_equal(S, thr[None, :] if mirrored else thr[:, None], out=mask)
        flat = np.flatnonzero(mask)
        if mirrored:  # survivors come column-major: flush() sorts them by row
            c, r = np.divmod(flat, n)
        else:
            r, c = np.divmod(flat, m)
        s = S.reshape(-1)[flat]
        col = col0 + c
        ok = ~zero[col] & (col != self.first + r)
        if not ok.all():
            r, col, s = r[ok], col[ok], s[ok]
        if len(r):
            # Merging costs a pass over the rows' buffers: batch survivors until they are worth it. The bar
            # lags meanwhile, which only admits a few more survivors.
            self.pending.append((r, col, s))
            self.pending_count += len(r)
            if self.pending_count * 2 >= self.keys.size or not self.full.all():
                self.flush()

    def flush(self) -> None:
        """Merge the pending survivors into the buffers."""
        if not self.pending:
            return
        r, col, s = (np.concatenate(part) for part in zip(*self.pending))
        self.pending, self.pending_count = [], 0
        order = np.argsort(r.astype(np.uint16), kind="stable")  # tiles have <= 4096 rows: a radix sort
        self._merge(r[order], _keys(s[order], col[order]))

    @property
    def best_s(self) -> np.ndarray:
        return _key_scores(self.keys)

    @property
    def best_i(self) -> np.ndarray:
        return _key_indices(self.keys)

    def _estimate(self, S, col0, zero, mirrored):
        """A safe early bar for rows whose buffer is not full yet, so the first tile does not admit everything.

        The maxima of g disjoint column groups are g distinct candidates, so the width-th largest of them is
        at most the row's true width-th best; groups holding the row itself or a zero column do not count.
        """
        m = S.shape[0] if mirrored else S.shape[1]
        groups = min(m, 4 * self.width)
        size = m // groups
        spoiled = 1 + len(np.unique(np.flatnonzero(zero[col0: col0 + groups * size]) // size))
        rank = self.width + spoiled
        if rank > groups:
            return np.float32(-np.inf)
        if mirrored:
            maxima = S[: groups * size].reshape(groups, size, -1).max(axis=1).T
        else:
            maxima = S[:, : groups * size].reshape(len(S), groups, size).max(axis=2)
        return np.partition(maxima, groups - rank, axis=1)[:, groups - rank]

    def _merge(self, r, keys):
        """Merge survivors (sorted by row) into the buffers: pad each row's survivors, keep the best `width`."""
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        rows = r[starts]
        counts = np.diff(np.r_[starts, len(r)])
        extra = int(counts.max())
        line = np.repeat(np.arange(len(rows)), counts)
        pos = self.width + np.arange(len(r)) - np.repeat(starts, counts)
        both = np.full((len(rows), self.width + extra), _PAD_KEY, dtype=np.uint64)
        both[:, : self.width] = self.keys[rows]
        both[line, pos] = keys
        best = np.partition(both, extra, axis=1)[:, extra:]
        self.keys[rows] = best
        worst = _key_scores(best.min(axis=1))
        self.full[rows] = np.isfinite(worst)
        self.thr[rows] = np.maximum(worst, self.floor)


def _keys(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys: float32 bits made sortable as unsigned (negatives flipped) | row index."""
    bits = scores.astype(np.float32).view(np.uint32)
    high = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return (high.astype(np.uint64) << np.uint64(32)) | index.astype(np.uint64)


def _key_scores(keys: np.ndarray) -> np.ndarray:
    high = (keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(high >> 31, high & np.uint32(0x7FFFFFFF), ~high)
    return bits.view(np.float32)


def _key_indices(keys: np.ndarray) -> np.ndarray:
    low = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return np.where(low == _PAD_LOW, PAD_INDEX, low)


_PAD_LOW = 0xFFFFFFFF  # the index part of an empty slot (row indices stay below it)
_PAD_KEY = _keys(np.array([-np.inf], dtype=np.float32), np.array([_PAD_LOW]))[0]


def _group(corpus, g0, g1, width, k, zero, floor, threshold, eps, plan, work, workers):
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
    t = plan.tile
    tiles = [_Rows(first, block, width, zero, floor) for first, block in
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
        return _score(corpus, r.first, r.query, r.best_s, r.best_i, k, zero, threshold, eps, plan, work)

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


def _score(corpus, first, query, cand_s, cand_i, k, zero, threshold, eps, plan, work):
    """Canonical scores for the buffered candidates; widen rows whose buffer may miss a true neighbour."""
    n, width = cand_s.shape
    order = np.argsort(-cand_s, axis=1, kind="stable")
    cand_s = np.take_along_axis(cand_s, order, axis=1)
    cand_i = np.take_along_axis(cand_i, order, axis=1)
    kth = cand_s[:, min(k, width) - 1]
    last = cand_s[:, -1]
    bound = kth - 2 * eps
    # Safe: the buffer is not full of finite scores, or everything left out is clearly below the k-th.
    safe = ~np.isfinite(last) | (last < bound) | (width >= corpus.rows - 1)
    # Only candidates within 2*eps of the k-th can be in the top k (k others beat the rest): score just those.
    need = np.isfinite(cand_s) & (cand_s >= bound[:, None])
    neighbors = np.full((n, k), PAD_INDEX, dtype=np.int64)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    safe_rows = np.nonzero(safe)[0]
    for lo in range(0, len(safe_rows), plan.score_rows):
        sel = safe_rows[lo: lo + plan.score_rows]
        w = max(1, int(need[sel].sum(axis=1).max()))  # `need` is a prefix of each sorted row
        idx = cand_i[sel, :w]
        valid = need[sel, :w]
        exact = canonical_scores(query[sel], corpus.take(np.where(valid, idx, 0)))
        exact[~valid] = -np.inf
        neighbors[sel], scores[sel] = _rank(exact, np.where(valid, idx, PAD_INDEX), k, threshold)
    for r in np.nonzero(~safe)[0]:
        neighbors[r], scores[r] = _widened_row(corpus, first + r, query[r], bound[r], k, zero,
                                               threshold, eps, plan, work)
    return neighbors, scores


def _rank(exact, idx, k, threshold):
    """Per row: keep finite scores (>= threshold), order by score desc then index asc, pad to k."""
    if threshold is not None:
        exact = np.where(exact >= threshold, exact, -np.inf)
    idx_key = np.where(np.isfinite(exact), idx, np.iinfo(np.int64).max)
    order = np.lexsort((idx_key, -exact), axis=-1)[:, :k]
    s = np.take_along_axis(exact, order, axis=1)
    i = np.take_along_axis(idx, order, axis=1)
    found = np.isfinite(s)
    out_i = np.full((len(exact), k), PAD_INDEX, dtype=np.int64)
    out_s = np.full((len(exact), k), np.nan, dtype=np.float32)
    m = s.shape[1]
    out_i[:, :m] = np.where(found, i, PAD_INDEX)
    out_s[:, :m] = np.where(found, s, np.nan)
    return out_i, out_s


def _widened_row(corpus, row, q, bound, k, zero, threshold, eps, plan, work):
    """A row with many near-ties at its k-th score: gather every candidate above `bound`, score them all."""
    picked = []
    for col0, block in corpus.blocks(0, corpus.rows, plan.tile * plan.tile // 64):
        work.check()
        s = block @ q
        s[zero[col0: col0 + len(block)]] = -np.inf
        if col0 <= row < col0 + len(block):
            s[row - col0] = -np.inf
        if threshold is not None:
            s[s < threshold - eps] = -np.inf
        picked.append(col0 + np.nonzero(s >= bound)[0])
    idx = np.concatenate(picked)
    best_i = np.full(k, PAD_INDEX, dtype=np.int64)
    best_s = np.full(k, np.nan, dtype=np.float32)
    # Score in slices so a row tied with millions of others still fits the budget.
    step = max(1, plan.score_rows * 64)
    for lo in range(0, len(idx), step):
        work.check()
        part = idx[lo: lo + step]
        exact = canonical_scores(q[None, :], corpus.take(part)[None, :, :])
        merged_i = np.concatenate([best_i, part])[None, :]
        merged_s = np.concatenate([np.where(best_i >= 0, best_s, -np.inf), exact[0]])[None, :]
        best_i, best_s = (a[0] for a in _rank(merged_s, merged_i, k, threshold))
    return best_i, best_s
