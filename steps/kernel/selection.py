"""Selection: each query row's heap of its `width` best approximate candidates, updated from float32 product
tiles by one compiled pass (compiled.py). A candidate is one sortable uint64 key (score bits above row index).
"""
from __future__ import annotations

import numpy as np

from . import compiled


class Candidates:
    """Selection state of one tile of query rows: the `width` best approximate candidates seen so far per row,
    as min-heaps of keys (steps/kernel/compiled.py updates them).

    `bar` is each row's admission bar: the worst kept score (a new candidate below it cannot enter), never
    below `admission_floor` (a pair below it cannot reach the threshold even with rounding error). Zero rows get
    +inf: they have no neighbours.
    """

    def __init__(self, first: int, query: np.ndarray, width: int, zero: np.ndarray, admission_floor: np.float32,
                 own_zero: np.ndarray | None = None):
        """`first`: the query rows' first index (a row never admits a column of its own index); `zero`: the
        all-zero flags of the corpus, and of the query rows too unless `own_zero` gives theirs (queries that are
        not corpus rows: steps/kernel/queries.py)."""
        n = query.shape[0]  # a float32 array, or CSR rows (sparse.py)
        self.first, self.query, self.width, self.admission_floor = first, query, width, admission_floor
        self.keys = np.full((n, width), PAD_KEY, dtype=np.uint64)
        self.zero = np.ascontiguousarray(zero[first: first + n] if own_zero is None else own_zero)
        self.bar = np.where(self.zero, np.float32(np.inf), admission_floor).astype(np.float32)

    def admit(self, S: np.ndarray, col0: int, zero: np.ndarray, mirror: "Candidates | None" = None) -> None:
        """Admit candidates from a C-contiguous product tile whose rows are ours and whose columns are corpus
        rows col0, col0+1, ...; when `mirror` holds those columns' candidates (a pair of query tiles), the same
        pass admits into theirs too."""
        if not self.full():
            np.maximum(self.bar, self._estimate(S, col0, zero), out=self.bar)
        if mirror is not None and not mirror.full():
            np.maximum(mirror.bar, mirror._estimate(np.ascontiguousarray(S.T), self.first, zero),
                       out=mirror.bar)
        col_zero = zero[col0: col0 + S.shape[1]]
        if mirror is None:
            compiled.admit(S, self.keys, self.bar, self.first, self.zero, _NO_KEYS, _NO_BAR, col0, col_zero,
                           self.admission_floor, False)
        else:
            compiled.admit(S, self.keys, self.bar, self.first, self.zero, mirror.keys, mirror.bar, col0,
                           col_zero, self.admission_floor, True)

    def admit_product(self, cols: "Candidates", col0: int, zero: np.ndarray, colmap: np.ndarray,
                      mirror: "Candidates | None" = None) -> None:
        """admit() fused with the sparse product of our CSR rows and `cols`' (compiled.admit_product): only pairs
        sharing a column are made, the others scoring exactly 0 (the pass calls this only when MinScore > 0)."""
        a = self.query  # CSR with int64 indices (sparse.py): one compiled signature
        col_zero = zero[col0: col0 + cols.query.shape[0]]
        keys, bar = (mirror.keys, mirror.bar) if mirror is not None else (_NO_KEYS, _NO_BAR)
        compiled.admit_product(a.indptr, a.indices, a.data, *cols.inverted(colmap), cols.query.shape[0],
                               colmap, self.keys, self.bar, self.first, self.zero, keys, bar, col0, col_zero,
                               self.admission_floor, mirror is not None)

    def inverted(self, colmap: np.ndarray) -> tuple:
        """Our CSR rows by column (compiled.invert), made once: every row tile of a step reads them."""
        if getattr(self, "_inverted", None) is None:
            q = self.query
            self._inverted = compiled.invert(q.indptr, q.indices, q.data, colmap)
        return self._inverted

    def restore_keys(self, keys: np.ndarray) -> None:
        """Take the heaps of a snapshot; the bars follow from their roots."""
        self.keys[:] = keys
        roots = key_scores(self.keys[:, 0])
        self.bar = np.where(self.zero, np.float32(np.inf), np.maximum(roots, self.admission_floor)).astype(np.float32)

    def full(self) -> bool:
        """Every row's heap holds `width` real candidates (or the row is all-zero)."""
        return bool((self.zero | (self.keys[:, 0] != PAD_KEY)).all())

    @property
    def best_s(self) -> np.ndarray:
        return key_scores(self.keys)

    @property
    def best_i(self) -> np.ndarray:
        return key_indices(self.keys)

    def _estimate(self, S, col0, zero):
        """A safe early bar for rows whose heap is not full yet, so the first tile does not admit everything.

        The maxima of g disjoint column groups are g distinct candidates, so the width-th largest of them is
        at most the row's true width-th best; groups holding the row itself or a zero column do not count.
        """
        m = S.shape[1]
        groups = min(m, 4 * self.width)
        size = m // groups
        spoiled = 1 + len(np.unique(np.flatnonzero(zero[col0: col0 + groups * size]) // size))
        rank = self.width + spoiled
        if rank > groups:
            return np.float32(-np.inf)
        maxima = S[:, : groups * size].reshape(len(S), groups, size).max(axis=2)
        return np.partition(maxima, groups - rank, axis=1)[:, groups - rank]


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
_NO_KEYS = np.full((1, 1), PAD_KEY, dtype=np.uint64)  # the mirror arguments when there is no mirror
_NO_BAR = np.full(1, np.inf, dtype=np.float32)
