"""Peak memory of one similarity host: its passes over a memory-mapped N x D matrix, with a set budget.

    python benchmarks/bench_memory.py --rows 1000000 --hosts 8 --steps 4 --k 100 --budget-mb 1024

Writes the matrix (seeded gaussian mixture, unit rows, float32 .npy) to --path once, in chunks, then runs the
first --steps steps of host 0's first pass (every step of every pass if 0), as the step does: the pass's own
rows' heaps live for the pass, one column block's at a time. Prints seconds, the projection to the host's
whole share, and peak RSS (ru_maxrss, which counts the mapped matrix pages that were read).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from steps.kernel import Corpus, Grid, KernelConfig, Pass, PartialList, StepDone, host_passes  # noqa: E402


def write_matrix(path: Path, rows: int, dim: int, seed: int, chunk: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, dim))
    out = open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for lo in range(0, rows, chunk):
        n = min(chunk, rows - lo)
        X = centres[rng.integers(0, 100, n)] + 0.8 * rng.standard_normal((n, dim))
        out[lo: lo + n] = X / np.linalg.norm(X, axis=1, keepdims=True)
    out.flush()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--steps", type=int, default=0, help="steps of host 0's passes to run; 0: all")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--budget-mb", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--path", default="/tmp/allpairs-bench-matrix.npy")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = Path(a.path)
    if not path.exists() or np.load(path, mmap_mode="r").shape != (a.rows, a.dim):
        # In a child process: pages written here would count in this process's peak RSS.
        import multiprocessing

        writer = multiprocessing.get_context("spawn").Process(target=write_matrix, args=(path, a.rows, a.dim, a.seed))
        writer.start()
        writer.join()
    X = np.load(path, mmap_mode="r")
    corpus = Corpus([X])
    config = KernelConfig(a.k, None, a.budget_mb << 20, a.threads)
    grid = Grid.for_rows(a.rows)
    passes = host_passes(grid, 0, a.hosts, config, a.dim)
    all_steps = sum(len(grid.pass_layout(b).steps) for b in passes)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    done = list_rows = 0
    for blocks in passes:
        for event in Pass(corpus, grid, blocks, config).run():
            if isinstance(event, StepDone):
                done += 1
                if done == a.steps:
                    break
            elif isinstance(event, PartialList):
                list_rows += event.stop - event.start
        if done == a.steps:
            break
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    matrix_mb = a.rows * a.dim * 4 / 2**20
    share = sum(grid.span(b)[1] - grid.span(b)[0] for p in passes for b in p)
    print(f"matrix {a.rows} x {a.dim} float32 ({matrix_mb:.0f} MB, memory-mapped), grid of {grid.blocks} blocks of "
          f"{grid.block} rows, host 0 of {a.hosts}: {share} rows in {len(passes)} pass(es) of {all_steps} steps; "
          f"k={a.k}, budget {a.budget_mb} MB")
    print(f"{done} steps in {seconds:.1f} s (projected for the whole share: {seconds * all_steps / max(done, 1):.0f} s)")
    print(f"peak RSS {peak:.0f} MB (before the kernel: {base / 1024:.0f} MB); matrix + budget = "
          f"{matrix_mb:.0f} + {a.budget_mb} = {matrix_mb + a.budget_mb:.0f} MB")

if __name__ == "__main__":
    main()
