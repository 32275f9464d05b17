"""A sparse corpus: the L2-normalized rows of sparse input, CSR float32 (steps/formats/sparse_chunks.py), searched by
the same passes, partial lists and selection as a dense one (blocking.py), so checkpoints, stops, shards, Merge and
byte-identity across host counts and budgets hold as they do for dense input.

Two product kernels, chosen once per corpus from its density (`choose_kernel`), logged and recorded in the shards:

- "sparse": only pairs of rows that share a column are multiplied. When MinScore is above zero (so a pair that
  shares no column, score exactly 0, can never be listed), the product is fused with selection
  (compiled.admit_product: Gustavson's row-by-row product, each pair admitted as it is made, never stored);
  otherwise scipy's CSR x CSR^T (float32) is densified into the tile the dense selection reads, zeros included.
- "dense": blocks are densified and multiplied by BLAS, for rows dense enough that BLAS over every column beats
  the sparse product (DENSE_DENSITY), when a densified tile fits the memory budget.

Either way an approximate score is within dot_error_bound(dot_terms) of the canonical one, dot_terms being the
most values a row holds: in a float32 dot over a row's zeros only the products of shared columns round (adding
an exact zero is exact), whatever the summation order. Canonical scores (exact.py's definition: the correctly
rounded sum of the products of the stored float32 values) are computed from the sparse rows: a dense row's zeros
add nothing to that sum, so the sparse and the dense form of one matrix get the same bits, and the same artifact.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from . import compiled
from .exact import rounding_bound

# Densify when at least this share of a row's columns hold values: BLAS then beats the sparse product. From
# benchmarks/bench_sparse.py's density sweep (README, Performance; 10,000 x 2,048, top-10): the sparse kernel
# 3.7 s against the dense one's 4.6 at density 0.07, 17.2 s against 5.2 at 0.18.
DENSE_DENSITY = 0.1
DENSE_TILE_SHARE = 8  # a densified (1536 x dim) float32 tile may take at most 1/8 of the budget


def choose_kernel(rows: int, dim: int, nnz: int, budget_bytes: int) -> str:
    """'dense' when the rows are dense enough and a densified tile fits; else 'sparse'."""
    density = nnz / max(rows * dim, 1)
    fits = 1536 * dim * 4 * DENSE_TILE_SHARE <= budget_bytes
    return "dense" if density >= DENSE_DENSITY and fits else "sparse"


class SparseCorpus:
    """All rows, CSR float32 with sorted column indices and no stored zeros (the sparse chunks, stacked)."""

    def __init__(self, chunks: Sequence[sp.csr_matrix], budget_bytes: int, kernel: str | None = None):
        matrix = chunks[0] if len(chunks) == 1 else sp.vstack(chunks, format="csr")
        # Columns renumbered by how many rows hold them, most first: a permutation of the columns changes no dot
        # product (the same values meet), and puts the columns every product visits at the front of the
        # compiled product's column map (in cache); columns of one row (`shared` onwards) meet nobody.
        df = np.bincount(matrix.indices, minlength=matrix.shape[1])
        rank = np.empty(matrix.shape[1], np.int64)
        rank[np.argsort(-df, kind="stable")] = np.arange(matrix.shape[1])
        self.matrix = sp.csr_matrix((matrix.data.copy(), rank[matrix.indices], matrix.indptr.copy()),
                                    shape=matrix.shape)
        self.matrix.sort_indices()
        self.shared = int((df >= 2).sum())
        self._indptr, self._indices = self.matrix.indptr.astype(np.int64), self.matrix.indices.astype(np.int64)
        self.counts = np.diff(self.matrix.indptr)
        self.kernel = kernel or choose_kernel(self.rows, self.dim, self.matrix.nnz, budget_bytes)

    @property
    def rows(self) -> int:
        return self.matrix.shape[0]

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    @property
    def width(self) -> int:
        """float32 values a row takes in memory plans: a value and its column (8 bytes) per stored value."""
        if self.kernel == "dense":
            return self.dim
        return max(1, 2 * math.ceil(self.matrix.nnz / max(self.rows, 1)))

    @property
    def dot_terms(self) -> int:
        return max(1, int(self.counts.max())) if self.rows else 1

    def describe(self) -> str:
        density = self.matrix.nnz / max(self.rows * self.dim, 1)
        return (f"{self.kernel} kernel for a sparse corpus of {self.rows} rows x {self.dim}, {self.matrix.nnz} values "
                f"(density {density:.2g}, at most {self.dot_terms} in a row)")

    def zero_mask(self, block_rows: int = 65536) -> np.ndarray:
        return self.counts == 0

    def blocks(self, start: int, stop: int, size: int) -> Iterator[tuple[int, object]]:
        for first in range(start, stop, size):
            yield first, self.rows_of(first, min(stop, first + size))

    def rows_of(self, start: int, stop: int):
        """A query tile: CSR with int64 index arrays (the compiled loops' one signature), or densified rows."""
        if self.kernel == "dense":
            return np.ascontiguousarray(self.matrix[start:stop].toarray(), dtype=np.float32)
        a, b = self.matrix.indptr[start], self.matrix.indptr[stop]
        indptr = self._indptr[start: stop + 1] - a
        return sp.csr_matrix((self.matrix.data[a:b], self._indices[a:b], indptr), shape=(stop - start, self.dim))

    def product(self, rows, cols, out: np.ndarray) -> None:
        """A tile's approximate scores, every pair's, into `out` (float32). (With MinScore > 0 the sparse kernel
        does not come here: the pass fuses the product with selection, compiled.admit_product.)"""
        if self.kernel == "dense":
            np.matmul(rows, cols.T, out=out)
        else:
            (rows @ cols.T).toarray(out=out)

    @staticmethod
    def scores(block, row) -> np.ndarray:
        if isinstance(block, np.ndarray):
            return block @ row[0]
        return np.asarray((block @ row.T).toarray(), dtype=np.float32).ravel()

    def canonical(self, query, index: np.ndarray) -> np.ndarray:
        """Canonical scores of query row i with corpus rows index[i, :], from the sparse rows (module docstring)."""
        n, m = index.shape
        if isinstance(query, np.ndarray):  # dense kernel: its query tiles are densified rows
            query = sp.csr_matrix(query)
        query.sort_indices()
        flat = index.reshape(-1).astype(np.int64)
        pairs = np.repeat(np.arange(n, dtype=np.int64), m)
        i64 = lambda v: v.astype(np.int64, copy=False)  # noqa: E731 (one compiled signature)
        args = (i64(query.indptr), i64(query.indices), query.data, pairs, self._indptr, self._indices,
                self.matrix.data, flat)
        fast, magnitude = compiled.sparse_dots(*args)
        # |fast - exact| <= gamma_n * sum |products| (any order); pairs sharing no column are exactly 0
        error = rounding_bound(self.dot_terms + 2, 2.0 ** -53) * magnitude + np.abs(fast) * 2.0 ** -52 + 2.0 ** -1000
        out = fast.astype(np.float32)
        up = (out.astype(np.float64) + np.nextafter(out, np.float32(np.inf)).astype(np.float64)) / 2
        down = (out.astype(np.float64) + np.nextafter(out, np.float32(-np.inf)).astype(np.float64)) / 2
        for p in np.flatnonzero((np.abs(fast - up) <= error) | (np.abs(fast - down) <= error)).tolist():
            a, b = query[pairs[p]], self.matrix[flat[p]]
            shared, ia, ib = np.intersect1d(a.indices, b.indices, assume_unique=True, return_indices=True)
            products = a.data[ia].astype(np.float64) * b.data[ib].astype(np.float64)
            out[p] = np.float32(math.fsum(products.tolist()))  # exact products, correctly rounded sum
        np.clip(out, -1, 1, out=out)
        for p in np.flatnonzero(np.abs(out) >= 1 - 2.0 ** -20).tolist():  # only such pairs can be a row and itself
            a, b = query[pairs[p]], self.matrix[flat[p]]
            if np.array_equal(a.indices, b.indices):
                if np.array_equal(a.data, b.data):
                    out[p] = 1
                elif np.array_equal(a.data, -b.data):
                    out[p] = -1
        return out.reshape(n, m)
