"""The similarity kernel: exact top-k cosine neighbours, every pair of rows computed once across the hosts.

    grid.py       which pairs each host computes: row blocks, circulant windows, an even share per host
    blocking.py   a host's passes (Pass, KernelConfig): column steps, workers, partial lists, snapshots
    selection.py  per-row heaps of approximate candidates from float32 product tiles
    compiled.py   the selection's hot loop (numba)
    exact.py      canonical scores, the error bounds, the exact top-k of each row from its candidates
    corpus.py     the rows searched
"""
from .blocking import (KernelConfig, Pass, PartialList, Paused, Plan, Snapshot, StepDone, all_pairs, default_threads,
                       host_passes)
from .corpus import Corpus
from .exact import PAD_INDEX, canonical_scores, dot_error_bound
from .grid import Grid

__all__ = ["Corpus", "Grid", "KernelConfig", "PAD_INDEX", "Pass", "PartialList", "Paused", "Plan", "Snapshot",
           "StepDone", "all_pairs", "canonical_scores", "default_threads", "dot_error_bound", "host_passes"]
