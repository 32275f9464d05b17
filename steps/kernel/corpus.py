"""The rows the kernel searches (the corpus) and the rows whose neighbours it wants (the queries)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np


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


@dataclass(frozen=True)
class QueryRows:
    """The query rows [start, stop) of the corpus itself: a self-join. A row is not its own neighbour, and a
    pair of query rows serves both of them (each pair inside a group is computed once)."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start
