"""The order of a row's neighbours, one definition for the kernel and for Merge: score descending, ties by the
lower row index; a row with fewer than k pads with index -1 and score NaN."""
from __future__ import annotations

import numpy as np

PAD_INDEX = -1


def rank(exact, idx, k, threshold):
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


def combine(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of rows from several partial lists of the same rows, each exact for its own columns (disjoint):
    together they are exact. parts: (neighbors, scores) pairs, NaN where padded."""
    scores = np.concatenate([np.where(np.isnan(sc), -np.inf, sc) for _, sc in parts], axis=1)
    index = np.concatenate([nb for nb, _ in parts], axis=1)
    return rank(scores, index, k, None)
