"""The similarity kernel: for a range of query rows, their top-k neighbours among all rows, in blocks.

Exactness and determinism come from a split between *selection* and *scoring*:

- Selection runs on float32 block products (fast BLAS). Each row keeps a buffer of its best `k + margin`
  approximate scores.
- Scoring recomputes every buffered candidate's score canonically: float32 inputs, float64 products and
  a fixed-order (pairwise) float64 sum, rounded to float32. That value does not depend on block shapes,
  BLAS kernels, thread counts or host splits, so the output is bit-identical whatever they are.
- A float32 dot product of two unit vectors of dimension D is within `eps = gamma_D` of the true value
  (standard rounding analysis). Every true top-k neighbour therefore has an approximate score of at least
  `a_k - 2*eps`, where `a_k` is the k-th best approximate score. If a row's buffer holds everything down to
  that bound, the exact top-k is inside it; if not (many near-ties), that row is widened: its candidates
  above the bound are gathered from a full pass and scored canonically. Correct for any data.

Order within a row: score descending, ties by lower row index. Padding: index -1, score NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

PAD_INDEX = -1
# Bytes of working memory per element of a (query rows x corpus columns) score tile: the float32 scores,
# the concatenated float32 candidates and their int64 indices, and argpartition's int64 output.
_TILE_BYTES_PER_ELEMENT = 24


@dataclass(frozen=True)
class Corpus:
    """All rows, as a list of row-contiguous float32 chunks (usually memory-mapped files)."""

    chunks: Sequence[np.ndarray]

    def __post_init__(self):
        dims = {c.shape[1] for c in self.chunks}
        if len(dims) > 1:
            raise ValueError(f"chunks have different dimensions: {sorted(dims)}")

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum([0] + [len(c) for c in self.chunks])

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

    def rows_range(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as one contiguous float32 array (copies across chunk boundaries)."""
        parts = [b for _, b in self.blocks(start, stop, stop - start or 1)]
        return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32))

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at arbitrary global indices (any shape), as float32 of shape index.shape + (dim,)."""
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
    """Scores that depend only on the two vectors: float64 products, fixed-order sum, float32 result.

    query: (n, D) float32; candidates: (n, m, D) float32 -> (n, m) float32.
    """
    prod = candidates.astype(np.float64) * query.astype(np.float64)[:, None, :]
    return np.add.reduce(prod, axis=-1).astype(np.float32)


@dataclass(frozen=True)
class Plan:
    """Block sizes derived from a memory budget, never from the number of rows."""

    query_rows: int
    corpus_rows: int
    score_rows: int  # query rows rescored at once

    @classmethod
    def from_budget(cls, budget_bytes: int, dim: int, width: int, total_rows: int) -> "Plan":
        tile = max(budget_bytes // _TILE_BYTES_PER_ELEMENT, 64 * 64)
        query = int(min(4096, max(64, math.isqrt(tile))))
        corpus = int(max(64, tile // query))
        corpus = min(corpus, max(total_rows, 1))
        # The canonical rescoring holds (rows, width, dim) float32 + float64 copies: 12 bytes an element.
        score = int(max(1, min(query, budget_bytes // max(12 * width * max(dim, 1), 1))))
        return cls(query_rows=query, corpus_rows=corpus, score_rows=score)


def top_k(
    corpus: Corpus,
    start: int,
    stop: int,
    k: int,
    min_score: float | None = None,
    budget_bytes: int = 256 << 20,
    zero: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Top-k neighbours of rows [start, stop) among all rows.

    Yields (first_row, neighbors int64 (n, k), scores float32 (n, k)) per query block, in row order, so a
    caller can checkpoint between blocks. `min_score` (inclusive) drops pairs scoring below it.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    zero = corpus.zero_mask() if zero is None else zero
    eps = dot_error_bound(corpus.dim)
    margin = max(16, k // 4)
    width = min(k + margin, max(corpus.rows - 1, 1))
    plan = Plan.from_budget(budget_bytes, corpus.dim, width, corpus.rows)
    threshold = None if min_score is None else np.float32(min_score)
    for first, query in corpus.blocks(start, stop, plan.query_rows):
        cand_s, cand_i = _select(corpus, first, query, width, zero, threshold, eps, plan)
        yield (first, *_score(corpus, first, query, cand_s, cand_i, k, zero, threshold, eps, plan))


def _select(corpus, first, query, width, zero, threshold, eps, plan):
    """The `width` best approximate (float32) scores of each query row, with their column indices."""
    n = len(query)
    best_s = np.full((n, width), -np.inf, dtype=np.float32)
    best_i = np.full((n, width), PAD_INDEX, dtype=np.int64)
    rows = np.arange(first, first + n)
    for col0, block in corpus.blocks(0, corpus.rows, plan.corpus_rows):
        scores = query @ block.T
        _mask(scores, rows, col0, zero, threshold, eps)
        cols = np.broadcast_to(np.arange(col0, col0 + len(block)), scores.shape)
        both_s = np.concatenate([best_s, scores], axis=1)
        both_i = np.concatenate([best_i, cols], axis=1)
        keep = np.argpartition(both_s, both_s.shape[1] - width, axis=1)[:, -width:]
        best_s = np.take_along_axis(both_s, keep, axis=1)
        best_i = np.take_along_axis(both_i, keep, axis=1)
    return best_s, best_i


def _mask(scores, rows, col0, zero, threshold, eps):
    """Exclude self-matches, zero rows (both ways) and, with a threshold, pairs that cannot reach it."""
    ncols = scores.shape[1]
    local = rows - col0
    hit = (local >= 0) & (local < ncols)
    scores[np.nonzero(hit)[0], local[hit]] = -np.inf
    scores[:, zero[col0: col0 + ncols]] = -np.inf
    scores[zero[rows]] = -np.inf
    if threshold is not None:
        scores[scores < threshold - eps] = -np.inf


def _score(corpus, first, query, cand_s, cand_i, k, zero, threshold, eps, plan):
    """Canonical scores for the buffered candidates; widen rows whose buffer may miss a true neighbour."""
    n, width = cand_s.shape
    ordered = -np.sort(-cand_s, axis=1)
    kth = ordered[:, min(k, width) - 1]
    last = ordered[:, -1]
    # Safe: the buffer is not full of finite scores, or everything left out is clearly below the k-th.
    safe = ~np.isfinite(last) | (last < kth - 2 * eps) | (width >= corpus.rows - 1)
    neighbors = np.full((n, k), PAD_INDEX, dtype=np.int64)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    safe_rows = np.nonzero(safe)[0]
    for lo in range(0, len(safe_rows), plan.score_rows):
        sel = safe_rows[lo: lo + plan.score_rows]
        idx = cand_i[sel]
        valid = np.isfinite(cand_s[sel])
        exact = canonical_scores(query[sel], corpus.take(np.where(valid, idx, 0)))
        exact[~valid] = -np.inf
        neighbors[sel], scores[sel] = _rank(exact, np.where(valid, idx, PAD_INDEX), k, threshold)
    for r in np.nonzero(~safe)[0]:
        neighbors[r], scores[r] = _widened_row(corpus, first + r, query[r], kth[r] - 2 * eps, k, zero,
                                               threshold, eps, plan)
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


def _widened_row(corpus, row, q, bound, k, zero, threshold, eps, plan):
    """A row with many near-ties at its k-th score: gather every candidate above `bound`, score them all."""
    picked = []
    for col0, block in corpus.blocks(0, corpus.rows, plan.corpus_rows):
        s = (block @ q)[None, :]
        _mask(s, np.array([row]), col0, zero, threshold, eps)
        picked.append(col0 + np.nonzero(s[0] >= bound)[0])
    idx = np.concatenate(picked)
    best_i = np.full(k, PAD_INDEX, dtype=np.int64)
    best_s = np.full(k, np.nan, dtype=np.float32)
    # Score in slices so a row tied with millions of others still fits the budget.
    step = max(1, plan.score_rows * 64)
    for lo in range(0, len(idx), step):
        part = idx[lo: lo + step]
        exact = canonical_scores(q[None, :], corpus.take(part)[None, :, :])
        merged_i = np.concatenate([best_i, part])[None, :]
        merged_s = np.concatenate([np.where(best_i >= 0, best_s, -np.inf), exact[0]])[None, :]
        best_i, best_s = (a[0] for a in _rank(merged_s, merged_i, k, threshold))
    return best_i, best_s
