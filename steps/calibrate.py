"""The kernel's throughput on this machine, measured in a few seconds: what the planner scales to instances.

    python -m steps.calibrate --dim D --k K [--memory-budget-mb B] [--rows N] [--seconds S]

Runs the real kernel (every core, the job's dimension, k and score budget) as one similarity host computes its
share: the passes of a grid over random unit rows (steps/kernel/blocking.py), every pair of rows once. Prints
one JSON line with `gflops`, counted as the progress lines count them (rows x corpus rows x dim: each pair's
product once), so the plan and the hosts' live GFLOP/s are one unit. The corpus is sized to about FLOP of
products (enough tiles for the workers to keep busy), repeated until `seconds` have passed after an untimed run
(page faults, thread start-up, the compiled selection). A larger corpus lets fewer candidates past each row's
bar, so for a large job the estimate errs on the slow side. The planner (pipeline/plan.py) runs this as a
subprocess: pipeline/ never imports the kernel.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .kernel import Corpus, KernelConfig, all_pairs
from .kernel.blocking import default_threads

FLOP = 1 << 36  # products per timed run: corpus rows^2 x dim
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
    corpus_rows = max(MIN_ROWS, int((FLOP / dim) ** 0.5))  # 32,768 rows of dim 64, 9,459 of dim 768
    corpus_rows = max(4, min(corpus_rows, rows or corpus_rows))
    matrix = np.random.default_rng(0).standard_normal((corpus_rows, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    corpus = Corpus([matrix])
    config = KernelConfig(min(k, corpus_rows - 1), None, budget_mb << 20, 0)
    began = time.perf_counter()
    all_pairs(corpus, config)  # warm-up
    calls, elapsed = 0, 0.0
    while calls < 1 or elapsed < seconds:
        start = time.perf_counter()
        all_pairs(corpus, config)
        elapsed += time.perf_counter() - start
        calls += 1
    threads = default_threads()
    return {"gflops": round(calls * corpus_rows * corpus_rows * dim / elapsed / 1e9, 3), "threads": threads,
            "cores": max(1, threads // threads_per_core()), "corpus_rows": corpus_rows, "dim": dim, "k": config.k,
            "seconds": round(time.perf_counter() - began, 3)}


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
