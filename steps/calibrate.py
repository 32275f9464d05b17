"""The kernel's throughput on this machine, measured in a second or two: what the planner scales to instance types.

    python -m steps.calibrate --dim D --k K [--memory-budget-mb B] [--rows N] [--seconds S]

Runs the real kernel (top_k, every core) on random unit rows of the job's dimension and k with the job's score
budget, and prints one JSON line: GFLOP/s counted as the progress lines count them (2 x corpus rows x dim per
query row, so the planner's estimate and the hosts' live GFLOP/s are one unit), and per physical core.

What is timed: whole top_k calls, each for a share of an eighth of the corpus (a host among several: within a
share each pair is computed once, so a larger share would look faster), after one untimed call (page faults,
thread start-up), until `seconds` have passed. The corpus is sized so one call is about CALL_FLOP of products
(a fraction of a second): a larger corpus lets fewer candidates past each row's bar and spreads each row's
fixed costs wider, so the estimate errs on the slow side. The planner (pipeline/plan.py) runs this as a subprocess: pipeline/ never imports the kernel.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .kernel import Corpus, KernelConfig, QueryRows, top_k
from .kernel.blocking import default_threads

CALL_FLOP = 1 << 35  # one timed call's products: (corpus rows / 8) x corpus rows x dim x 2
MIN_ROWS = 1024


def threads_per_core() -> int:
    """Hardware threads per physical core here (Linux sysfs; 1 when unknown)."""
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
    except OSError:
        return 1
    count = 0
    for part in siblings.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return max(1, count)


def calibrate(dim: int, k: int, budget_mb: int = 1024, rows: int | None = None, seconds: float = 1.0) -> dict:
    corpus_rows = max(MIN_ROWS, int((4 * CALL_FLOP / dim) ** 0.5))  # 46,341 rows of dim 64, 13,377 of dim 768
    corpus_rows = max(2, min(corpus_rows, rows or corpus_rows))
    share = max(1, corpus_rows // 8)
    matrix = np.random.default_rng(0).standard_normal((corpus_rows, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    corpus = Corpus([matrix])
    config = KernelConfig(min(k, corpus_rows - 1), None, budget_mb << 20, 0)
    zero = corpus.zero_mask()
    calls, elapsed = -1, 0.0  # the first call is not timed
    while calls < 1 or elapsed < seconds:
        began = time.perf_counter()
        for _ in top_k(corpus, QueryRows(0, share), config, zero):
            pass
        if calls >= 0:
            elapsed += time.perf_counter() - began
        calls += 1
    gflops = calls * share * 2.0 * corpus_rows * dim / elapsed / 1e9
    threads = default_threads()
    cores = max(1, threads // threads_per_core())
    return {"gflops": round(gflops, 3), "gflops_per_core": round(gflops / cores, 3), "threads": threads,
            "cores": cores, "corpus_rows": corpus_rows, "share_rows": share, "dim": dim, "k": config.k,
            "calls": calls, "seconds": round(elapsed, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steps.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--memory-budget-mb", type=int, default=1024)
    parser.add_argument("--rows", type=int, help="the job's rows: a smaller matrix is calibrated as it is")
    parser.add_argument("--seconds", type=float, default=1.0, help="how long to time the kernel (default 1)")
    args = parser.parse_args(argv)
    if args.dim < 1 or args.k < 1:
        parser.error("--dim and --k must be at least 1")
    print(json.dumps(calibrate(args.dim, args.k, args.memory_budget_mb, args.rows, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
