"""Brute force reference: the full score matrix, sorted per row. Small data only."""
from __future__ import annotations

import numpy as np


def normalize(X: np.ndarray) -> np.ndarray:
    """L2-normalize rows in float64, as Preprocess does; zero rows stay zero."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norms == 0, 1, norms)).astype(np.float32)


def brute_force(Xn: np.ndarray, k: int, min_score: float | None = None):
    """Top-k of Xn @ Xn.T (self excluded, zero rows excluded both ways, ties by lower index).

    Scores use float64 products and sums rounded to float32, the kernel's canonical scoring: within [-1, 1],
    exactly 1 for two identical rows and -1 for opposite ones.
    """
    N = len(Xn)
    X64 = Xn.astype(np.float64)
    S = np.clip((X64 @ X64.T).astype(np.float32), -1, 1)
    same = (Xn[:, None, :] == Xn[None, :, :]).all(axis=2)
    S[same & Xn.any(axis=1)[:, None]] = 1
    S[(Xn[:, None, :] == -Xn[None, :, :]).all(axis=2) & Xn.any(axis=1)[:, None]] = -1
    zero = ~Xn.any(axis=1)
    S[np.arange(N), np.arange(N)] = -np.inf
    S[:, zero] = -np.inf
    S[zero] = -np.inf
    return _ranked(S, k, min_score)


def brute_queries(Qn: np.ndarray, Xn: np.ndarray, k: int, min_score: float | None = None,
                  exclude: np.ndarray | None = None):
    """Top-k of Qn @ Xn.T: each query row against every corpus row (zero rows excluded both ways, ties by lower
    corpus index), with the same canonical scores as brute_force; `exclude[q]` >= 0: a corpus row query q may
    not have (its own id in the corpus)."""
    S = np.clip((Qn.astype(np.float64) @ Xn.astype(np.float64).T).astype(np.float32), -1, 1)
    live = Qn.any(axis=1)[:, None]
    S[(Qn[:, None, :] == Xn[None, :, :]).all(axis=2) & live] = 1
    S[(Qn[:, None, :] == -Xn[None, :, :]).all(axis=2) & live] = -1
    S[:, ~Xn.any(axis=1)] = -np.inf
    S[~Qn.any(axis=1)] = -np.inf
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        S[rows, exclude[rows]] = -np.inf
    return _ranked(S, k, min_score)


def _ranked(S: np.ndarray, k: int, min_score: float | None):
    """Each row's top k of S (score descending, lower column on ties; -inf never kept, nor below min_score),
    padded with index -1 and score NaN."""
    if min_score is not None:
        S[S < np.float32(min_score)] = -np.inf
    rows, cols = S.shape
    neighbors = np.full((rows, k), -1, dtype=np.int64)
    scores = np.full((rows, k), np.nan, dtype=np.float32)
    for i in range(rows):
        order = np.lexsort((np.arange(cols), -S[i]))[:k]
        keep = order[np.isfinite(S[i, order])]
        neighbors[i, : len(keep)] = keep
        scores[i, : len(keep)] = S[i, keep]
    return neighbors, scores
