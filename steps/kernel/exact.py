"""Exact scoring: the canonical score of a pair, the error bounds that make selection safe, and the final
exact top-k of each row from its buffered candidates (widening the rare rows whose buffer may miss one).

Canonical score: the float32 rounding of the correctly rounded float64 dot product of the two float32 vectors,
kept within [-1, 1] (a cosine), and exactly 1 for a vector and itself (-1 for its exact negative): two identical
stored rows score 1.0, not the 0.99999994 their float32 rounding may give. It depends on the two vectors only,
not on block shapes, BLAS kernels, thread counts or host splits. The dot product is computed with float64 BLAS
and accepted when no float32 rounding boundary lies within its error bound; otherwise (about one pair in a
million) an exact sum (math.fsum) decides.
"""
from __future__ import annotations

import math

import numpy as np

from ..order import PAD_INDEX, rank


def rounding_bound(terms: int, unit_roundoff: float) -> float:
    """gamma_n = n*u/(1-n*u), with 1% slack: the relative error bound of a dot product summed in any order
    (standard rounding analysis), for `terms` products in a precision of unit roundoff `unit_roundoff`."""
    return 1.01 * terms * unit_roundoff / (1 - terms * unit_roundoff)


# A stored row is its unit vector rounded to float32, so its squared norm is within 2**-23 (+ tiny) of 1: the
# canonical score's clamp to [-1, 1] and its exact 1 for identical rows move a dot product by less than this.
NORM_SLACK = 2.0 ** -22


def dot_error_bound(dim: int) -> float:
    """Bound on |float32 dot - canonical score| for stored rows (gamma_D in float32, plus NORM_SLACK)."""
    return rounding_bound(max(dim, 1) + 2, 2.0 ** -24) + NORM_SLACK


def canonical_scores(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32(RN64(q . c)) within [-1, 1], 1 for identical vectors, -1 for opposite ones, for each pair: it
    depends on the two vectors only, however it is computed.

    query: (n, D) float32; candidates: (n, m, D) float32 -> (n, m) float32.
    """
    q64 = query.astype(np.float64)
    c64 = candidates.astype(np.float64)
    fast = np.matmul(c64, q64[:, :, None])[..., 0]
    # |fast - exact| <= gamma_D * |q| |c| (any summation order); the correctly rounded float64 is within half
    # an ulp more. RN32 is constant between consecutive float32 midpoints: if none lies that close, fast's
    # float32 rounding is the canonical one.
    norms = np.sqrt(np.einsum("nd,nd->n", q64, q64))[:, None] * np.sqrt(np.einsum("nmd,nmd->nm", c64, c64))
    error = rounding_bound(query.shape[-1] + 2, 2.0 ** -53) * norms + np.abs(fast) * 2.0**-52 + 2.0**-1000
    out = fast.astype(np.float32)
    up = (out.astype(np.float64) + np.nextafter(out, np.float32(np.inf)).astype(np.float64)) / 2
    down = (out.astype(np.float64) + np.nextafter(out, np.float32(-np.inf)).astype(np.float64)) / 2
    close = (np.abs(fast - up) <= error) | (np.abs(fast - down) <= error)
    for i, j in zip(*np.nonzero(close)):
        # Products of float32 values are exact in float64; fsum returns their correctly rounded sum.
        out[i, j] = np.float32(math.fsum((q64[i] * c64[i, j]).tolist()))
    np.clip(out, -1, 1, out=out)
    for i, j in zip(*np.nonzero(np.abs(out) >= 1 - 2.0 ** -20)):  # only such pairs can be a row and itself
        if np.array_equal(query[i], candidates[i, j]):
            out[i, j] = 1
        elif np.array_equal(query[i], -candidates[i, j]):
            out[i, j] = -1
    return out


def exact_top_k(search, first: int, query: np.ndarray, cand_s: np.ndarray, cand_i: np.ndarray,
                columns: list[tuple[int, int]]):
    """The exact top-k of query rows first, first+1, ... among the corpus rows in `columns` (row ranges), from
    their buffered approximate candidates (all from those columns): canonical scores for the candidates that can
    still make it; rows whose buffer may miss a near-tie are widened.

    `search` holds corpus, zero mask, k, threshold, eps (dot_error_bound), plan and work (blocking._Search).
    A float32 dot product is within eps of the canonical score, so every true top-k neighbour has an approximate
    score of at least a_k - 2*eps, where a_k is the k-th best approximate score (the near-tie bound). If a
    row's buffer holds everything down to that bound, the exact top-k is inside it; if not, the row is widened:
    its candidates above the bound are gathered from a pass over `columns` and scored canonically.
    """
    corpus, k, eps, plan = search.corpus, search.k, search.eps, search.plan
    available = sum(stop - start for start, stop in columns)
    n, width = cand_s.shape
    order = np.argsort(-cand_s, axis=1, kind="stable")
    cand_s = np.take_along_axis(cand_s, order, axis=1)
    cand_i = np.take_along_axis(cand_i, order, axis=1)
    kth = cand_s[:, min(k, width) - 1]
    last = cand_s[:, -1]
    near_tie_bound = kth - 2 * eps
    # Safe: the buffer is not full of finite scores, or everything left out is clearly below the k-th.
    safe = ~np.isfinite(last) | (last < near_tie_bound) | (width >= available - 1)
    # Only candidates within 2*eps of the k-th can be in the top k (k others beat the rest): score just those.
    need = np.isfinite(cand_s) & (cand_s >= near_tie_bound[:, None])
    neighbors = np.full((n, k), PAD_INDEX, dtype=np.int64)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    safe_rows = np.nonzero(safe)[0]
    for lo in range(0, len(safe_rows), plan.score_rows):
        sel = safe_rows[lo: lo + plan.score_rows]
        w = max(1, int(need[sel].sum(axis=1).max()))  # `need` is a prefix of each sorted row
        idx = cand_i[sel, :w]
        valid = need[sel, :w]
        exact = corpus.canonical(query[sel], np.where(valid, idx, 0))
        exact[~valid] = -np.inf
        neighbors[sel], scores[sel] = rank(exact, np.where(valid, idx, PAD_INDEX), k, search.threshold)
    for r in np.nonzero(~safe)[0]:
        neighbors[r], scores[r] = _widened_row(search, first + r, query[r: r + 1], near_tie_bound[r], columns)
    return neighbors, scores


def _widened_row(search, row: int, q, near_tie_bound: float, columns: list[tuple[int, int]]):
    """A row with many near-ties at its k-th score: gather every candidate above the bound, score them all.
    `q`: the row as a (1, dim) tile (dense or CSR, as the corpus holds it)."""
    corpus, zero, k, threshold, plan, work = (search.corpus, search.zero, search.k, search.threshold, search.plan,
                                              search.work)
    picked = []
    for col0, block in ((c0, b) for start, stop in columns for c0, b in corpus.blocks(start, stop, plan.tile ** 2 // 64)):
        work.check()
        s = corpus.scores(block, q)
        size = block.shape[0]
        s[zero[col0: col0 + size]] = -np.inf
        if col0 <= row < col0 + size:
            s[row - col0] = -np.inf
        if threshold is not None:
            s[s < search.admission_floor] = -np.inf
        picked.append(col0 + np.nonzero(s >= near_tie_bound)[0])
    idx = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    best_i = np.full(k, PAD_INDEX, dtype=np.int64)
    best_s = np.full(k, np.nan, dtype=np.float32)
    # Score in slices so a row tied with millions of others still fits the budget.
    step = max(1, plan.score_rows * 64)
    for lo in range(0, len(idx), step):
        work.check()
        part = idx[lo: lo + step]
        exact = corpus.canonical(q, part[None, :])
        merged_i = np.concatenate([best_i, part])[None, :]
        merged_s = np.concatenate([np.where(best_i >= 0, best_s, -np.inf), exact[0]])[None, :]
        best_i, best_s = (a[0] for a in rank(merged_s, merged_i, k, threshold))
    return best_i, best_s
