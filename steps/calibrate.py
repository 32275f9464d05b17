"""The kernel's throughput on this machine, measured in a few seconds: what the planner scales to instances.

    python -m steps.calibrate --dim D --k K [--memory-budget-mb B] [--rows N] [--seconds S]

Runs the real kernel (top_k, every core) on random unit rows of the job's dimension and k with the job's score
budget, and prints one JSON line. Throughput is GFLOP/s as the progress lines count it (2 x corpus rows x dim per
query row, so the plan and the hosts' live GFLOP/s are one unit), measured at two points on one corpus, as
`points`: [part of the corpus the query rows are, GFLOP/s]:

- a quarter of the corpus (a host among four): whole top_k calls, after an untimed one (page faults, thread
  start-up), until `seconds` have passed;
- half of it, once: inside a group of query rows (`group_rows`) each pair's product is computed once and
  serves both rows, so a larger part runs faster per row; on this kernel the cost per operation falls in a
  straight line with the part, which the planner extends to the job's hosts.

The corpus is sized so the half call is about HALF_FLOP of products, enough tiles for the workers to keep busy;
a larger corpus lets fewer candidates past each row's bar, so for a large job the estimate errs on the slow
side. `group_rows` is how the kernel would block the job's own rows. The planner (pipeline/plan.py) runs this
as a subprocess: pipeline/ never imports the kernel.
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
from .kernel.blocking import Plan, default_threads

HALF_FLOP = 1 << 36  # the half call's products: corpus rows / 2 x corpus rows x dim x 2
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


def group_rows(rows: int, dim: int, k: int, budget_mb: int) -> int:
    """Query rows the kernel holds as one group for a job of `rows` (pairs inside a group are computed once)."""
    width = min(k + max(8, k // 16), max(rows - 1, 1))  # as top_k sizes each row's candidate buffer
    return Plan.from_budget(budget_mb << 20, dim, width, rows).group_rows


def calibrate(dim: int, k: int, budget_mb: int = 1024, rows: int | None = None, seconds: float = 1.0) -> dict:
    corpus_rows = max(MIN_ROWS, int((HALF_FLOP / dim) ** 0.5))  # 32,768 rows of dim 64, 9,459 of dim 768
    corpus_rows = max(4, min(corpus_rows, rows or corpus_rows))
    matrix = np.random.default_rng(0).standard_normal((corpus_rows, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    corpus = Corpus([matrix])
    config = KernelConfig(min(k, corpus_rows - 1), None, budget_mb << 20, 0)
    zero = corpus.zero_mask()
    flop_per_row = 2.0 * corpus_rows * dim

    def gflops(queries: int, repeat: float = 0.0) -> float:
        calls, elapsed = 0, 0.0
        while calls < 1 or elapsed < repeat:
            began = time.perf_counter()
            for _ in top_k(corpus, QueryRows(0, queries), config, zero):
                pass
            elapsed += time.perf_counter() - began
            calls += 1
        return calls * queries * flop_per_row / elapsed / 1e9

    quarter, half = max(1, corpus_rows // 4), max(2, corpus_rows // 2)
    began = time.perf_counter()
    gflops(quarter)  # warm-up
    points = [[quarter / corpus_rows, round(gflops(quarter, seconds), 3)], [half / corpus_rows, round(gflops(half), 3)]]
    threads = default_threads()
    return {"points": points, "threads": threads, "cores": max(1, threads // threads_per_core()),
            "corpus_rows": corpus_rows, "dim": dim, "k": config.k,
            "group_rows": group_rows(rows or corpus_rows, dim, k, budget_mb),
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
