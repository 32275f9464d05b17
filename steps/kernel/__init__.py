"""The similarity kernel: each query row's exact top-k cosine neighbours among the corpus rows.

    corpus.py     the rows searched and the rows queried (QueryRows: a self-join range of the corpus)
    blocking.py   top_k and its KernelConfig: memory-bounded blocks, workers, progressive yields, abandoning
    selection.py  per-row buffers of approximate candidates from float32 product tiles
    exact.py      canonical scores, the error bounds, the exact top-k of each row from its candidates
"""
from .blocking import KernelConfig, Plan, default_threads, top_k
from .corpus import Corpus, QueryRows
from .exact import PAD_INDEX, canonical_scores, dot_error_bound

__all__ = ["Corpus", "KernelConfig", "PAD_INDEX", "Plan", "QueryRows", "canonical_scores", "default_threads",
           "dot_error_bound", "top_k"]
