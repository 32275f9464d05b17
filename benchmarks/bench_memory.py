"""Peak memory of one similarity host: its rows against a memory-mapped N x D matrix, with a set budget.

    python benchmarks/bench_memory.py --rows 1000000 --hosts 8 --query-rows 16000 --k 100 --budget-mb 1024

Writes the matrix (seeded gaussian mixture, unit rows, float32 .npy) to --path once, in chunks, then runs
`top_k` over the first --query-rows rows of host 0's share (the whole share if 0), writing results to
memory-mapped outputs as the step does. Prints seconds, the projection to the full share, and peak RSS
(ru_maxrss, which counts the mapped matrix pages that were read).
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
from steps.kernel import Corpus, KernelConfig, QueryRows, top_k  # noqa: E402


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
    p.add_argument("--query-rows", type=int, default=0, help="0: host 0's whole share")
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
    share = a.rows // a.hosts
    stop = a.query_rows or share
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out_dir = path.parent
    nb = open_memmap(out_dir / "bench-neighbors.npy", mode="w+", dtype=np.int64, shape=(stop, a.k))
    sc = open_memmap(out_dir / "bench-scores.npy", mode="w+", dtype=np.float32, shape=(stop, a.k))
    began = time.perf_counter()
    for first, n_, s_ in top_k(Corpus([X]), QueryRows(0, stop), KernelConfig(a.k, None, a.budget_mb << 20, a.threads)):
        nb[first: first + len(n_)] = n_
        sc[first: first + len(s_)] = s_
    seconds = time.perf_counter() - began
    nb.flush(), sc.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    matrix_mb = a.rows * a.dim * 4 / 2**20
    output_mb = stop * a.k * 12 / 2**20
    print(f"matrix {a.rows} x {a.dim} float32 ({matrix_mb:.0f} MB, memory-mapped), host share {share} rows, "
          f"computed {stop} rows, k={a.k}, budget {a.budget_mb} MB")
    print(f"seconds {seconds:.1f} (projected for the whole share: {seconds * share / stop:.0f} s)")
    print(f"peak RSS {peak:.0f} MB (before the kernel: {base / 1024:.0f} MB); matrix + budget + output "
          f"= {matrix_mb:.0f} + {a.budget_mb} + {output_mb:.0f} = {matrix_mb + a.budget_mb + output_mb:.0f} MB")


if __name__ == "__main__":
    main()
