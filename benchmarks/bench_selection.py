"""The selection alone, both ways the issue allows: our numba heaps (steps/kernel/compiled.py) vs faiss-cpu's
heap primitives (float_minheap_array_t.addn, HeapArray<CMin>) on the same float32 product tiles.

    python benchmarks/bench_selection.py                 # 50000 x 128, tiles of 1536, k=10 and 100

What is timed is one step of a pass as the kernel runs it: a column tile (1536 rows of the matrix) against every
row tile of the rest, the rows' heaps already warm from earlier steps (filled, untimed, from --warm column
tiles), the column tile's heaps starting empty and kept across the row tiles. The products are computed
outside the clock; only the selection is timed, single-threaded (both release the GIL, so workers scale the
same way). "rows only": the rows' heaps; "both directions": the rows' and the column tile's from each product
(a symmetric tile); ours does both in one pass over the tile, faiss takes the transposed tile (a copy, timed)
in a second call. Heap width: k plus our margin (what the kernel keeps). Medians of --repeat.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_kernel import mixture  # noqa: E402
from steps.kernel import KernelConfig  # noqa: E402
from steps.kernel.selection import Candidates  # noqa: E402


class Step:
    """Row tiles, warm-up column tiles and the timed column tile, with every product precomputed."""

    def __init__(self, X, tile, warm):
        self.X, self.tile = X, tile
        c0 = len(X) - tile * (1 + warm)
        self.rows = [(r0, X[r0: r0 + tile]) for r0 in range(0, c0 - tile + 1, tile)]
        self.warm = [(w0, X[w0: w0 + tile]) for w0 in range(c0 + tile, len(X) - tile + 1, tile)]
        self.col0, self.cols = c0, X[c0: c0 + tile]
        self.products = [np.ascontiguousarray(q @ self.cols.T) for _, q in self.rows]
        self.warm_products = [[np.ascontiguousarray(q @ w.T) for _, w in self.warm] for _, q in self.rows]
        self.zero = np.zeros(len(X), bool)

    @property
    def scores(self) -> int:
        return sum(S.size for S in self.products)


def ours(step: Step, width: int, mirrored: bool) -> float:
    floor = np.float32(-np.inf)
    heaps = [Candidates(r0, q, width, step.zero, floor) for r0, q in step.rows]
    for c, products in zip(heaps, step.warm_products):
        for (w0, _), S in zip(step.warm, products):
            c.admit(S, w0, step.zero)
    cols = Candidates(step.col0, step.cols, width, step.zero, floor) if mirrored else None
    began = time.perf_counter()
    for c, S in zip(heaps, step.products):
        c.admit(S, step.col0, step.zero, mirror=cols)
    return time.perf_counter() - began


def _faiss_heap(n, width):
    import faiss

    vals, ids = np.full((n, width), -np.inf, np.float32), np.full((n, width), -1, np.int64)
    heap = faiss.float_minheap_array_t()
    heap.nh, heap.k, heap.val, heap.ids = n, width, faiss.swig_ptr(vals), faiss.swig_ptr(ids)
    heap.heapify()
    return heap, (vals, ids)  # the arrays must outlive the heap that points into them


def faiss_heaps(step: Step, width: int, mirrored: bool) -> float:
    import faiss

    heaps = [_faiss_heap(len(q), width) for _, q in step.rows]
    for (heap, _), products in zip(heaps, step.warm_products):
        for (w0, _), S in zip(step.warm, products):
            heap.addn(S.shape[1], faiss.swig_ptr(S), w0, 0, len(S))
    cols, keep = _faiss_heap(step.tile, width)
    began = time.perf_counter()
    for ((heap, _), (r0, _), S) in zip(heaps, step.rows, step.products):
        heap.addn(S.shape[1], faiss.swig_ptr(S), step.col0, 0, len(S))
        if mirrored:
            T = np.ascontiguousarray(S.T)
            cols.addn(len(S), faiss.swig_ptr(T), r0, 0, len(T))
    return time.perf_counter() - began


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--tile", type=int, default=1536)
    p.add_argument("--k", type=int, nargs="+", default=[10, 100])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warm", type=int, default=3, help="column tiles that fill the rows' heaps first")
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_limits
    from steps.kernel.compiled import warm_up

    warm_up()
    step = Step(mixture(a.rows, a.dim), a.tile, a.warm)
    print(f"{a.rows} x {a.dim}: a column tile of {a.tile} rows against {len(step.rows)} row tiles "
          f"({step.scores / 1e6:.0f} M scores), rows warmed on {len(step.warm)} column tiles; 1 thread; median of "
          f"{a.repeat}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'selection':<30} {'k':>4} {'width':>5} {'seconds':>8} {'ns/score':>9} {'faiss/ours':>10}")
    with threadpool_limits(1):
        for k in a.k:
            width = KernelConfig(k).width
            for mirrored, label in ((False, "rows only"), (True, "both directions")):
                t_ours = statistics.median(ours(step, width, mirrored) for _ in range(a.repeat))
                t_faiss = statistics.median(faiss_heaps(step, width, mirrored) for _ in range(a.repeat))
                for name, t in ((f"numba, {label}", t_ours), (f"faiss addn, {label}", t_faiss)):
                    print(f"{name:<30} {k:>4} {width:>5} {t:8.3f} {t / step.scores * 1e9:9.2f} "
                          f"{t_faiss / t_ours if name.startswith('numba') else 1.0:10.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
