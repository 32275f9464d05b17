"""The rows the kernel searches (the corpus) and the rows whose neighbours it wants (the queries)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .exact import canonical_scores


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

    # What the kernel asks of any corpus (sparse.py's SparseCorpus answers the same for CSR rows).
    kernel = "dense"  # which product kernel runs: logged and recorded in the shards

    @property
    def width(self) -> int:
        """float32 values a row takes in memory plans."""
        return self.dim

    @property
    def dot_terms(self) -> int:
        """The most products one dot product sums (its float32 error bound grows with it)."""
        return self.dim

    def rows_of(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in one C-contiguous float32 array (a query tile)."""
        return np.ascontiguousarray(np.concatenate([b for _, b in self.blocks(start, stop, stop - start)]))

    @staticmethod
    def product(rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
        """out = rows . cols^T, float32 (the approximate scores selection admits from)."""
        np.matmul(rows, cols.T, out=out)

    def canonical(self, query: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Canonical scores (exact.py) of query row i with corpus rows index[i, :]: (n, m) float32."""
        return canonical_scores(query, self.take(index))

    @staticmethod
    def scores(block: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Approximate float32 scores of a block of corpus rows with one query row (a (1, dim) tile)."""
        return block @ row[0]

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


@dataclass(frozen=True)
class QueryRows:
    """The query rows [start, stop) of the corpus itself: a self-join. A row is not its own neighbour, and a
    pair of query rows serves both of them (each pair inside a group is computed once)."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start
