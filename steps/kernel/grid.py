"""Who computes which pairs: a grid of row blocks, each unordered pair of blocks assigned to exactly one block
row, and block rows split evenly across hosts. Chosen from the row count and resourceconfig.json alone: no host
talks to another.

The grid: M blocks of `block` rows (the last one shorter), `block` from the row count only (not the host count
or the memory budget), so finished work keeps its meaning when a job restarts with another InstanceCount.

Circulant windows: block row i computes its tiles (i, j) for j in W(i) = i, i+1, ..., i + (M-1)//2 (mod M), plus
i + M/2 when M is even and i < M/2. Every unordered pair of blocks, and each block with itself, is in exactly
one window, and every window holds (M+1)//2 or M//2 + 1 blocks: block rows cost the same, so a host's share
of block rows is its share of the work. A tile (i, j) with i != j serves both directions: the rows of i get
candidates among the columns of j, and the rows of j among those of i (the mirror).
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_BLOCK_ROWS = 512  # a block is never thinner than this: per-tile overheads stay small
MAX_BLOCK_ROWS = 16384  # nor thicker: one column step of a host (its rows x one block) stays seconds long
TARGET_BLOCKS = 256  # enough blocks that any InstanceCount up to ~30 splits them within a few percent


@dataclass(frozen=True)
class Grid:
    rows: int
    block: int

    @classmethod
    def for_rows(cls, rows: int, block: int | None = None) -> "Grid":
        """The grid of `rows`; `block` (contract.BLOCK_ROWS_ENV, for tests and tuning) overrides its block rows."""
        return cls(rows, block or max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, -(-rows // TARGET_BLOCKS))))

    @property
    def blocks(self) -> int:
        return max(1, -(-self.rows // self.block))

    def span(self, b: int) -> tuple[int, int]:
        """Rows [start, stop) of block b."""
        return b * self.block, min(self.rows, (b + 1) * self.block)

    def window(self, i: int) -> list[int]:
        """The column blocks of block row i, in the order they are taken: i first, then i+1, ..."""
        m = self.blocks
        cols = [(i + d) % m for d in range((m - 1) // 2 + 1)]
        if m % 2 == 0 and i < m // 2:
            cols.append(i + m // 2)
        return cols

    def in_window(self, i: int, j: int) -> bool:
        m = self.blocks
        d = (j - i) % m
        return d <= (m - 1) // 2 or (m % 2 == 0 and d == m // 2 and i < m // 2)

    def host_blocks(self, index: int, hosts: int) -> range:
        """The block rows of host `index` of `hosts`: an even, contiguous share (possibly empty)."""
        m = self.blocks
        return range(index * m // hosts, (index + 1) * m // hosts)

    def pass_layout(self, blocks: range) -> "PassLayout":
        """What a pass over block rows `blocks` computes and which partial lists it gives (blocking.py)."""
        m = self.blocks
        columns = {j for i in blocks for j in self.window(i)}
        steps = sorted(columns, key=lambda j: (j - blocks.start) % m)
        mirrors = {j: tuple(i for i in blocks if self.in_window(i, j)) for j in steps if j not in blocks}
        own = {i: tuple(sorted(set(self.window(i)) | {i2 for i2 in blocks if self.in_window(i2, i)}))
               for i in blocks}
        return PassLayout(tuple(steps), mirrors, own)

    def describe(self) -> dict:
        return {"rows": self.rows, "block": self.block, "blocks": self.blocks}


@dataclass(frozen=True)
class PassLayout:
    """A pass's column blocks in the order it takes them (its steps); for each step's block outside the pass,
    the pass's block rows whose windows hold it (its mirror list covers those); for each own block row, the
    column blocks its list covers (its window and the mirrors of the pass's other tiles with it)."""

    steps: tuple[int, ...]
    mirrors: dict[int, tuple[int, ...]]
    own: dict[int, tuple[int, ...]]
