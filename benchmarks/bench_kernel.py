"""All rows against all rows: our kernel vs faiss IndexFlatIP, scikit-learn brute force and the matmul limit.

    python benchmarks/bench_kernel.py                    # N=50000, D=128, k=10 and 100, median of 3
    python benchmarks/bench_kernel.py --quick            # ~5000 rows, a smoke run
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_kernel.py   # current numpy's own kernel

Data: a seeded gaussian mixture, L2-normalized in float64 and stored as float32 (what Preprocess produces).
Every peer's neighbours are checked against ours, tie-aware: where a neighbour differs, its exact score must
equal ours at that rank to within float32 rounding. Seconds are medians over --repeat runs; ratios are
within this run only (the machine is shared and noisy). faiss, scikit-learn and threadpoolctl are
benchmark-only extras (`pip install -e .[bench]`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from steps.kernel import Corpus, KernelConfig, QueryRows, default_threads, dot_error_bound, top_k  # noqa: E402


def mixture(rows: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Reproducible clustered unit vectors: cluster centres plus gaussian noise, normalized."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    X = centres[rng.integers(0, clusters, rows)] + 0.8 * rng.standard_normal((rows, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def ours(X, k, threads, budget):
    parts = list(top_k(Corpus([X]), QueryRows(0, len(X)), KernelConfig(k, None, budget, threads)))
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def drop_self(idx, scores, k):
    """Peers search k+1 and return the row itself among them: remove it (or the last one, if a tie hid it)."""
    rows = np.arange(len(idx))[:, None]
    is_self = idx == rows
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), idx.shape[1] - 1)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(len(idx)), drop] = False
    return idx[keep].reshape(len(idx), k), scores[keep].reshape(len(idx), k)


def faiss_knn(X, k, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    scores, idx = index.search(X, k + 1)
    return drop_self(idx, scores, k)


def sklearn_knn(X, k, threads):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine", n_jobs=threads).fit(X)
    dist, idx = nn.kneighbors(X)
    return drop_self(idx, (1 - dist).astype(np.float32), k)


def matmul_limit(X, block=4096):
    """The flops alone: X @ X.T in row blocks into a reused buffer, nothing selected."""
    out = np.empty((min(block, len(X)), len(X)), dtype=np.float32)
    for lo in range(0, len(X), block):
        q = X[lo: lo + block]
        np.matmul(q, X.T, out=out[: len(q)])
    return None


def agreement(X, ref, other, tol):
    """'identical', 'ties: n rows' (same scores rank by rank, different ids), or 'MISMATCH ...'."""
    ref_i, ref_s = ref
    idx, _ = other
    if np.array_equal(idx, ref_i):
        return "identical"
    differ = np.flatnonzero((idx != ref_i).any(axis=1))
    # Their neighbours' exact scores, best first, must match ours rank by rank.
    theirs = np.sort(_pair_scores(X, differ, idx[differ]), axis=1)[:, ::-1]
    gap = np.abs(theirs - ref_s[differ].astype(np.float64))
    bad = differ[(gap > tol).any(axis=1)]
    if len(bad):
        return f"MISMATCH in {len(bad)} rows (e.g. row {bad[0]})"
    return f"ties: {len(differ)} rows"


def _pair_scores(X, rows, idx):
    """float64 scores of each row with its listed neighbours."""
    vecs = X[idx].astype(np.float64)
    return np.einsum("rkd,rd->rk", vecs, X[rows].astype(np.float64))


def timed(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def environment(threads):
    lines = [f"date {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} "
             f"{_cpu_model()}, {threads} threads (cores available: {default_threads()})",
             f"python {platform.python_version()}, numpy {np.__version__}",
             "env " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                                             "OMP_NUM_THREADS"))]
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            lines.append(f"{info['user_api']}: {info['internal_api']} {info.get('version')} "
                         f"{info.get('architecture', '')} threads={info['num_threads']} ({Path(info['filepath']).name})")
    except ImportError:
        lines.append("threadpoolctl not installed: BLAS kernel unknown")
    return lines


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, nargs="+", default=[10, 100])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--budget-mb", type=int, default=1024, help="our kernel's memory budget (the step's default)")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=[], choices=["faiss", "sklearn", "matmul"])
    p.add_argument("--quick", action="store_true", help="5000 rows, one repeat")
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.repeat = 5000, 1
    threads = a.threads or default_threads()
    for peer, module in (("faiss", "faiss"), ("sklearn", "sklearn")):
        if peer not in a.skip and importlib.util.find_spec(module) is None:
            print(f"{peer}: not installed, skipped (pip install -e '.[bench]' adds it)")
            a.skip.append(peer)
    X = mixture(a.rows, a.dim, a.clusters, a.seed)
    flops = 2.0 * a.rows * a.rows * a.dim
    tol = 4 * dot_error_bound(a.dim)
    print("\n".join(environment(threads)))
    print(f"data: {a.rows} x {a.dim} gaussian mixture ({a.clusters} clusters, seed {a.seed}); "
          f"median of {a.repeat}; our budget {a.budget_mb} MB\n")
    header = f"{'method':<24} {'k':>4} {'seconds':>8} {'GFLOP/s':>8} {'faiss/this':>10} {'matmul/this':>11}  agreement"
    print(header)
    print("-" * len(header))
    limit = None
    if "matmul" not in a.skip:
        limit, _ = timed(lambda: matmul_limit(X), a.repeat)
    for k in a.k:
        rows = []
        t, ref = timed(lambda: ours(X, k, threads, a.budget_mb << 20), a.repeat)
        rows.append(("allpairs top_k", t, "reference"))
        if "faiss" not in a.skip:
            t, got = timed(lambda: faiss_knn(X, k, threads), a.repeat)
            rows.append(("faiss IndexFlatIP", t, agreement(X, ref, got, tol)))
        if "sklearn" not in a.skip:
            t, got = timed(lambda: sklearn_knn(X, k, threads), a.repeat)
            rows.append(("sklearn brute cosine", t, agreement(X, ref, got, tol)))
        if limit is not None:
            rows.append(("numpy matmul (limit)", limit, "-"))
        faiss_t = dict((r[0], r[1]) for r in rows).get("faiss IndexFlatIP")
        for name, t, agree in rows:
            vs_faiss = f"{faiss_t / t:10.2f}" if faiss_t else f"{'-':>10}"
            vs_limit = f"{limit / t:11.2f}" if limit else f"{'-':>11}"
            print(f"{name:<24} {k:>4} {t:8.2f} {flops / t / 1e9:8.1f} {vs_faiss} {vs_limit}  {agree}", flush=True)


if __name__ == "__main__":
    main()
