"""Selection: each query row's buffer of its `width` best approximate candidates, updated from float32 product
tiles. Candidates are kept as one sortable uint64 key each (score bits above row index), so merging survivors
into the buffers is one partition of one array.
"""
from __future__ import annotations

import numpy as np


class Candidates:
    """Selection state of one tile of query rows: the `width` best approximate scores seen so far per row.

    `bar` is each row's admission bar: the worst buffered score once the buffer is full (a new candidate
    below it cannot enter), and never below `admission_floor` (a pair below it cannot reach the threshold even
    with rounding error). Zero rows get +inf: they have no neighbours.
    """

    def __init__(self, first: int, query: np.ndarray, width: int, zero: np.ndarray, admission_floor: np.float32):
        n = len(query)
        self.first, self.query, self.width, self.admission_floor = first, query, width, admission_floor
        # One uint64 key a candidate: its score's sortable bits above its row index, so merging is one
        # partition of one array (no argpartition + gathers of two).
        self.keys = np.full((n, width), PAD_KEY, dtype=np.uint64)
        self.bar = np.where(zero[first: first + n], np.float32(np.inf), admission_floor).astype(np.float32)
        self.full = zero[first: first + n].copy()  # rows whose bar comes from a full buffer (or zero rows)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # survivors not merged yet
        self.pending_count = 0

    def update(self, S: np.ndarray, col0: int, zero: np.ndarray, scratch: np.ndarray, mirrored: bool) -> None:
        """Admit candidates from a C-contiguous product tile whose rows (or, if `mirrored`, columns) are ours.

        The tile's other axis is corpus rows col0, col0+1, ...
        """
        n, m = (S.shape[1], S.shape[0]) if mirrored else S.shape
        bar = self.bar
        if not self.full.all():
            bar = np.where(self.full, bar, np.maximum(bar, self._estimate(S, col0, zero, mirrored)))
        # One compare over the tile in memory order, then only the few survivors are touched (no per-tile sort).
        mask = scratch[: n * m].reshape(S.shape)
        np.greater_equal(S, bar[None, :] if mirrored else bar[:, None], out=mask)
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
        self._merge(r[order], keys_of(s[order], col[order]))

    @property
    def best_s(self) -> np.ndarray:
        return key_scores(self.keys)

    @property
    def best_i(self) -> np.ndarray:
        return key_indices(self.keys)

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
        both = np.full((len(rows), self.width + extra), PAD_KEY, dtype=np.uint64)
        both[:, : self.width] = self.keys[rows]
        both[line, pos] = keys
        best = np.partition(both, extra, axis=1)[:, extra:]
        self.keys[rows] = best
        worst = key_scores(best.min(axis=1))
        self.full[rows] = np.isfinite(worst)
        self.bar[rows] = np.maximum(worst, self.admission_floor)


def keys_of(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys: float32 bits made sortable as unsigned (negatives flipped) | row index."""
    bits = scores.astype(np.float32).view(np.uint32)
    high = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return (high.astype(np.uint64) << np.uint64(32)) | index.astype(np.uint64)


def key_scores(keys: np.ndarray) -> np.ndarray:
    high = (keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(high >> 31, high & np.uint32(0x7FFFFFFF), ~high)
    return bits.view(np.float32)


def key_indices(keys: np.ndarray) -> np.ndarray:
    low = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return np.where(low == PAD_LOW, -1, low)  # an empty slot reads as index -1


PAD_LOW = 0xFFFFFFFF  # the index part of an empty slot (row indices stay below it)
PAD_KEY = keys_of(np.array([-np.inf], dtype=np.float32), np.array([PAD_LOW]))[0]
