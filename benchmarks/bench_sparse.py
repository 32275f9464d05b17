"""The sparse kernel against sparse_dot_topn's sp_matmul_topn (ING's; the usual tool for TF-IDF top-n), in the
same run: TF-IDF-like rows, top-10 per row, 2 threads each, identical neighbours checked (tie-aware), peak memory
of each; then a density sweep showing where the dense path (densified blocks, BLAS) takes over.

    .venv/bin/python -m pip install sparse_dot_topn        # benchmark-only
    .venv/bin/python benchmarks/bench_sparse.py                         # 100,000 x 2**18, ~50 values a row
    .venv/bin/python benchmarks/bench_sparse.py --rows 20000 --no-sweep # quicker

The matrix: column ids zipf-distributed (exponent 1.1) over 2**18 columns, 84 terms drawn per row (about 50
distinct values a row remain after max_df), weights tf * idf
(tf = 1 + log(count), idf = log(N / df)), columns present in more than 5% of rows dropped (max_df=0.05), rows
L2-normalized (by Preprocess's normalize_sparse_rows: both methods get the same float32 CSR rows). allpairs runs
with MinScore 1e-6 (pairs sharing no column, exactly 0, are not listed: sparse_dot_topn lists none either) and
sparse_dot_topn with threshold 1e-6 and top_n 11 (its lists hold the row itself; it is removed). Each method runs
in its own process, which reports its time (the matrix already loaded, and numba's compiled code, as
sparse_dot_topn's is at import) and its peak RSS (VmHWM).

Neighbours compared tie-aware: per row, the lists must agree on every neighbour scoring clearly above the
row's 10th score (by more than 1e-6: sparse_dot_topn sums in float32 in its own order, allpairs' scores are
canonical), and on the scores rank by rank within 1e-6.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

K, MIN_SCORE, THREADS = 10, 1e-6, 2


def tfidf(rows: int, dim: int, per_row: int, seed: int = 0, max_df: float = 0.05) -> sp.csr_matrix:
    from steps.preprocess import normalize_sparse_rows

    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.poisson(per_row, rows))
    cols = (rng.zipf(1.1, int(lengths.sum())) - 1) % dim
    cols = rng.permutation(dim)[cols]  # popular columns spread over the index range
    row = np.repeat(np.arange(rows), lengths)
    counts = sp.csr_matrix((np.ones(len(cols)), (row, cols)), shape=(rows, dim))  # duplicates summed: term counts
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=dim)
    keep = df <= max_df * rows
    counts = counts.multiply(keep[None, :]).tocsr()
    counts.eliminate_zeros()
    df = np.bincount(counts.indices, minlength=dim)
    counts.data = (1 + np.log(counts.data)) * np.log(rows / df[counts.indices])
    units, _ = normalize_sparse_rows(counts.astype(np.float64))
    return units.astype(np.float32)


def vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(method: str, matrix: Path, out: Path, kernel: str | None, k: int) -> None:
    """In a child process: one method on the saved matrix; its lists to `out`, its figures as JSON on stdout."""
    X = sp.load_npz(matrix).tocsr()
    if method == "allpairs":  # numba's compiled code loaded first, as sparse_dot_topn's is at import (~1 s, once
        from steps.kernel.compiled import warm_up  # a host process)
        warm_up()
    loaded = vmhwm_mb()
    began = time.perf_counter()
    if method == "allpairs":
        from steps.kernel import KernelConfig, all_pairs
        from steps.kernel.sparse import SparseCorpus

        budget = 1024 << 20
        corpus = SparseCorpus([X], budget, kernel)
        neighbors, scores = all_pairs(corpus, KernelConfig(k, MIN_SCORE, budget, THREADS))
        used = corpus.kernel
    else:
        from sparse_dot_topn import sp_matmul_topn

        C = sp_matmul_topn(X, X.T, top_n=k + 1, threshold=MIN_SCORE, sort=True, n_threads=THREADS)
        neighbors, scores = _without_self(C, k)
        used = "sp_matmul_topn"
    seconds = time.perf_counter() - began
    np.save(out / f"{method}-neighbors.npy", neighbors)
    np.save(out / f"{method}-scores.npy", scores)
    print(json.dumps({"seconds": seconds, "peak_mb": vmhwm_mb(), "loaded_mb": loaded, "kernel": used}))


def _without_self(C: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = C.shape[0]
    neighbors = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), np.nan, np.float32)
    for r in range(n):
        a, b = C.indptr[r], C.indptr[r + 1]
        idx, val = C.indices[a:b], C.data[a:b]
        keep = idx != r
        idx, val = idx[keep][:k], val[keep][:k]
        neighbors[r, :len(idx)], scores[r, :len(idx)] = idx, val
    return neighbors, scores


def compare(ours: tuple, theirs: tuple, tol: float = 1e-6) -> tuple[int, int]:
    """(rows whose lists disagree beyond ties, rows compared)."""
    (n1, s1), (n2, s2) = ours, theirs
    bad = 0
    for r in range(len(n1)):
        a = np.nan_to_num(s1[r], nan=-np.inf)
        b = np.nan_to_num(s2[r], nan=-np.inf)
        if not np.allclose(np.where(np.isfinite(a), a, -9), np.where(np.isfinite(b), b, -9), atol=tol, rtol=0):
            bad += 1
            continue
        last = a[np.isfinite(a)][-1] if np.isfinite(a).any() else np.inf
        clear1 = set(n1[r][a > last + tol].tolist())
        clear2 = set(n2[r][b > last + tol].tolist())
        bad += clear1 != clear2
    return bad, len(n1)


def measure(method: str, matrix: Path, out: Path, kernel: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--matrix", str(matrix), "--out", str(out)]
    if kernel:
        cmd += ["--kernel", kernel]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["lists"] = (np.load(out / f"{method}-neighbors.npy"), np.load(out / f"{method}-scores.npy"))
    return figures


def headline(rows: int, dim: int, per_row: int, work: Path) -> None:
    X = tfidf(rows, dim, per_row)
    matrix = work / "m.npz"
    sp.save_npz(matrix, X, compressed=False)
    print(f"{rows:,} rows x {dim:,} columns, {X.nnz / rows:.1f} values a row after max_df=0.05 "
          f"(density {X.nnz / rows / dim:.2g}); top-{K}, {THREADS} threads; load average {os.getloadavg()[0]:.1f}")
    theirs = measure("sdt", matrix, work)
    ours = measure("allpairs", matrix, work)
    bad, total = compare(ours["lists"], theirs["lists"])
    print("| method | kernel | seconds | peak RSS MB (matrix loaded: MB) | speed-up |")
    print("|---|---|---|---|---|")
    for name, f in (("allpairs all_pairs", ours), ("sparse_dot_topn sp_matmul_topn", theirs)):
        print(f"| {name} | {f['kernel']} | {f['seconds']:.2f} | {f['peak_mb']:.0f} ({f['loaded_mb']:.0f}) | "
              f"{theirs['seconds'] / f['seconds']:.2f}x |")
    print(f"neighbours: {total - bad:,} of {total:,} rows identical (tie-aware); load average "
          f"{os.getloadavg()[0]:.1f} at the end")


def sweep(rows: int, dim: int, work: Path) -> None:
    print(f"\ndensity sweep: {rows:,} rows x {dim:,} columns, top-{K}, {THREADS} threads (seconds; the kernel "
          f"chosen automatically marked *); load average {os.getloadavg()[0]:.1f}")
    print("| values a row | density | sparse kernel | dense kernel | sp_matmul_topn | chosen |")
    print("|---|---|---|---|---|---|")
    from steps.kernel.sparse import choose_kernel

    for per_row in (10, 50, 200, 600):
        X = tfidf(rows, dim, per_row, seed=per_row, max_df=1.0)  # no max_df: the density is the point
        matrix = work / f"sweep-{per_row}.npz"
        sp.save_npz(matrix, X, compressed=False)
        times = {kernel: measure("allpairs", matrix, work, kernel)["seconds"] for kernel in ("sparse", "dense")}
        theirs = measure("sdt", matrix, work)["seconds"]
        chosen = choose_kernel(rows, dim, X.nnz, 1024 << 20)
        cell = {k: f"{'*' if k == chosen else ''}{t:.2f}" for k, t in times.items()}
        print(f"| {X.nnz / rows:.0f} | {X.nnz / rows / dim:.3f} | {cell['sparse']} | {cell['dense']} | {theirs:.2f} "
              f"| {chosen} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2 ** 18)
    parser.add_argument("--terms", type=int, default=84,
                        help="terms drawn per row (84: about 50 values a row remain after max_df=0.05)")
    parser.add_argument("--sweep-rows", type=int, default=10_000)
    parser.add_argument("--sweep-dim", type=int, default=2048)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--only-sweep", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--matrix", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kernel", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.matrix, args.out, args.kernel, K)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only_sweep:
            headline(args.rows, args.dim, args.terms, Path(tmp))
        if not args.no_sweep:
            sweep(args.sweep_rows, args.sweep_dim, Path(tmp))


if __name__ == "__main__":
    main()
