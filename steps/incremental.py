"""Incremental reruns, the computation: the exact top-k lists of a new corpus from the lists of a previous one,
at a cost proportional to the changed rows times the corpus, not to the corpus squared.

Rows are matched by id and told apart by a digest of their normalized vector (`row_digests`):

- added (a new id) and changed (same id, another digest) rows, and every unchanged row whose previous list held
  a removed or changed row ("lost a neighbour"), are *fresh*: their lists come from a query pass against the
  whole new corpus (steps/kernel/queries.py, each excluding its own row);
- every other unchanged row is *clean*: its previous list is still its exact top-k among the unchanged rows (all
  its members are unchanged, and the unchanged rows are a subset of the previous corpus), so its new list is that
  list (renumbered) combined (steps/order.py) with its exact top-k among the added and changed rows, a query pass
  against those rows only.

The result equals a full computation of the new corpus, bit for bit: the same canonical scores (they depend on
the two vectors only), the same order, the same ties, provided the unchanged rows keep their relative order
(ties are broken by the lower row index). `plan_update` returns the reason to fall back to a full run instead:
another k, threshold or normalization, unchanged rows in another order, or nothing left to reuse.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernel import Corpus, KernelConfig, PartialList
from .kernel.queries import QueryPass, query_passes
from .order import combine


def row_digests(corpus: Corpus, block_rows: int = 65536) -> np.ndarray:
    """A 64-bit digest of each row's stored float32 bytes: equal rows, equal digests; a changed row keeps its
    digest with probability about 2**-64. Vectorized over rows: each 8-byte word of a row (zero-padded) goes
    through splitmix64's finalizer and is folded into the row's state, so it costs a few passes over the matrix."""
    out = np.empty(corpus.rows, np.uint64)
    for first, block in corpus.blocks(0, corpus.rows, block_rows):
        rows = np.ascontiguousarray(block, "<f4")
        if rows.shape[1] % 2:
            rows = np.concatenate([rows, np.zeros((len(rows), 1), "<f4")], axis=1)
        words = rows.view("<u8")
        state = np.full(len(rows), _salt(words.shape[1] + 1), np.uint64)
        for j in range(words.shape[1]):
            state = _mix(state ^ _mix(words[:, j] + _salt(j + 1)))
        out[first: first + len(rows)] = state
    return out


def _salt(i: int) -> np.uint64:
    """i times the golden-ratio constant, modulo 2**64 (a word's position changes its hash)."""
    return np.uint64((0x9E3779B97F4A7C15 * i) & 0xFFFFFFFFFFFFFFFF)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (uint64 arithmetic wraps, as the algorithm wants)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Previous:
    """What a previous result holds for an update: its rows' ids and digests, its lists and how they were made."""

    ids: np.ndarray  # (N0,) int64 or str
    digests: np.ndarray  # (N0,) uint64
    neighbors: np.ndarray  # (N0, k) int64, -1 where padded
    scores: np.ndarray  # (N0, k) float32, NaN where padded
    k: int
    threshold: float | None
    normalization: str  # what the rows were normalized with (e.g. the normalized format and version)


@dataclass(frozen=True)
class Update:
    """How the new rows relate to the previous ones (new row indices unless said otherwise)."""

    fresh: np.ndarray  # rows computed against the whole corpus: added, changed, and those that lost a neighbour
    clean: np.ndarray  # unchanged rows whose previous list is kept, updated with the candidates
    candidates: np.ndarray  # added and changed rows: the new candidates of the clean rows
    old_of_new: np.ndarray  # (N,) each new row's previous row, -1 when added or changed
    added: int
    changed: int
    removed: int
    lost: int  # unchanged rows that lost a neighbour to a removal or a change


def plan_update(previous: Previous, ids: np.ndarray, digests: np.ndarray, k: int, threshold: float | None,
                normalization: str) -> Update | str:
    """The update, or the reason for a full run instead (one sentence, for the log)."""
    if (previous.k, previous.threshold, previous.normalization) != (k, threshold, normalization):
        return (f"the previous result was computed with k={previous.k}, threshold={previous.threshold}, "
                f"normalization {previous.normalization}, this run asks k={k}, threshold={threshold}, "
                f"normalization {normalization}: a full run")
    old_index = {v: i for i, v in enumerate(previous.ids.tolist())}
    old = np.array([old_index.get(v, -1) for v in ids.tolist()], np.int64)
    same = old >= 0
    same[same] = previous.digests[old[same]] == digests[same]
    old_of_new = np.where(same, old, -1)
    kept = old_of_new[same]
    if len(kept) and (np.diff(kept) <= 0).any():
        return ("the unchanged rows are not in their previous order (ties are broken by row order, so the previous "
                "lists would not be those of a full run): a full run")
    if not len(kept):
        return "no row is unchanged: a full run"
    gone = np.ones(len(previous.ids), bool)  # previous rows removed or changed
    gone[kept] = False
    nb = previous.neighbors[kept]
    lost = ((nb >= 0) & gone[np.where(nb >= 0, nb, 0)]).any(axis=1)
    unchanged = np.flatnonzero(same)
    candidates = np.flatnonzero(~same)
    fresh = np.union1d(candidates, unchanged[lost])
    clean = unchanged[~lost]
    known = np.isin(ids, previous.ids)
    return Update(fresh, clean, candidates, old_of_new, int((~known).sum()), int((known & ~same).sum()),
                  int(len(previous.ids) - known.sum()), int(lost.sum()))


def apply_update(previous: Previous, update: Update, corpus: Corpus, config: KernelConfig,
                 zero: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The new corpus's (neighbors, scores), equal to a full computation (module docstring)."""
    n, k = corpus.rows, config.k
    zero = corpus.zero_mask() if zero is None else zero
    neighbors = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), np.nan, np.float32)
    # Fresh rows: against the whole new corpus, each without itself.
    fresh_nb, fresh_sc = _query(corpus, update.fresh, update.fresh, corpus, config, zero)
    neighbors[update.fresh], scores[update.fresh] = fresh_nb, fresh_sc
    if len(update.clean):
        # Clean rows: their previous lists renumbered, and their best among the added and changed rows.
        new_of_old = np.full(len(previous.ids), -1, np.int64)
        have = update.old_of_new >= 0
        new_of_old[update.old_of_new[have]] = np.flatnonzero(have)
        old_nb = previous.neighbors[update.old_of_new[update.clean]]
        old_nb = np.where(old_nb >= 0, new_of_old[np.where(old_nb >= 0, old_nb, 0)], -1)
        old_sc = previous.scores[update.old_of_new[update.clean]]
        if len(update.candidates):
            sub = Corpus([np.ascontiguousarray(corpus.take(update.candidates))])
            cand_nb, cand_sc = _query(corpus, update.clean, np.full(len(update.clean), -1), sub, config,
                                      zero[update.candidates])
            cand_nb = np.where(cand_nb >= 0, update.candidates[np.where(cand_nb >= 0, cand_nb, 0)], -1)
            nb, sc = combine([(old_nb, old_sc), (cand_nb, cand_sc)], k)
        else:
            nb, sc = old_nb, old_sc
        neighbors[update.clean], scores[update.clean] = nb, sc
    return neighbors, scores


def _query(corpus: Corpus, rows: np.ndarray, exclude: np.ndarray, against: Corpus, config: KernelConfig,
           zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of corpus rows `rows` among the rows of `against`, row r never listing `exclude[r]`."""
    k = config.k
    if not len(rows):
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    vectors = np.ascontiguousarray(corpus.take(rows))
    exclude = np.asarray(exclude, np.int64)
    parts = []
    for r in query_passes(0, len(rows), config, corpus.dim, against.rows):
        p = QueryPass(against, vectors[r.start:r.stop], r, exclude[r.start:r.stop], config, zero)
        parts += [e for e in p.run() if isinstance(e, PartialList)]
    return np.concatenate([p.neighbors for p in parts]), np.concatenate([p.scores for p in parts])
