"""All rows against all rows: our kernel vs faiss IndexFlatIP (and scikit-learn) and the matmul floor.

    python benchmarks/bench_kernel.py                        # the table: N=50000 x D=64,128,384,768 and
                                                             # N=100000, 200000 x D=128; k=10 and 100
    python benchmarks/bench_kernel.py --sizes 50000x128      # one size
    python benchmarks/bench_kernel.py --quick                # 5000 x 64, a smoke run

Fairness. Each method runs in its own process, so each gets its own BLAS set up for it alone: faiss-cpu bundles
an old OpenBLAS that may take a virtual machine's CPU for an older one (here it took 12.8 s at k=10 with the
kernel it picked, 4.0 s with OPENBLAS_CORETYPE=SkylakeX). Before timing, every method is probed with each
OPENBLAS_CORETYPE this CPU can run (and with none), and runs with its fastest; the table prints the BLAS
library, version and kernel each one ran. Threads: --threads for everyone (OpenMP, BLAS, our workers).

Data: a seeded gaussian mixture, L2-normalized (what Preprocess produces). faiss's neighbours are checked
against ours, tie-aware: where a neighbour differs, its exact score must equal ours at that rank to within
float32 rounding. Seconds are medians over --repeat runs; ratios are within this run only (the machine is
shared and noisy). GFLOP/s count 2*N^2*D (the whole product, as a method that ignores the symmetry computes it);
"of floor" is the symmetric matmul floor (half of N x N x D in float32 products, nothing selected) over our
seconds. faiss and scikit-learn are benchmark-only extras (`pip install -e .[bench]`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from steps.kernel import Corpus, KernelConfig, all_pairs, default_threads, dot_error_bound  # noqa: E402

TABLE = ["50000x64", "50000x128", "50000x384", "50000x768", "100000x128", "200000x128"]
CORETYPES = ["", "Haswell", "SkylakeX", "Zen"]  # "" = the library's own choice
FLAGS = {"Haswell": "avx2", "SkylakeX": "avx512f", "Zen": "avx2"}


def mixture(rows: int, dim: int, clusters: int = 100, seed: int = 0) -> np.ndarray:
    """Reproducible clustered unit vectors: cluster centres plus gaussian noise, normalized."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    X = centres[rng.integers(0, clusters, rows)] + np.float32(0.8) * rng.standard_normal((rows, dim), np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


# ---- the methods, each run in a worker process ---------------------------------------------------------------


def drop_self(idx, scores, k):
    """Peers search k+1 and return the row itself among them: remove it (or the last one, if a tie hid it)."""
    rows = np.arange(len(idx))[:, None]
    is_self = idx == rows
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), idx.shape[1] - 1)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(len(idx)), drop] = False
    return idx[keep].reshape(len(idx), k), scores[keep].reshape(len(idx), k)


def run_allpairs(X, k, threads):
    return all_pairs(Corpus([X]), KernelConfig(k, None, 1024 << 20, threads))


def run_faiss(X, k, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    scores, idx = index.search(X, k + 1)
    return drop_self(idx, scores, k)


def run_sklearn(X, k, threads):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine", n_jobs=threads).fit(X)
    dist, idx = nn.kneighbors(X)
    return drop_self(idx, (1 - dist).astype(np.float32), k)


def run_matmul(X, k, threads, block=4096):
    """The flops alone: X @ X.T in row blocks into a reused buffer, nothing selected."""
    out = np.empty((min(block, len(X)), len(X)), dtype=np.float32)
    for lo in range(0, len(X), block):
        q = X[lo: lo + block]
        np.matmul(q, X.T, out=out[: len(q)])
    return None


METHODS = {"allpairs": run_allpairs, "faiss": run_faiss, "sklearn": run_sklearn, "matmul": run_matmul}
MODULES = {"faiss": "faiss", "sklearn": "sklearn"}


def worker(a) -> None:
    """One method on one size: prints a JSON line (seconds, BLAS kernel), saves its neighbours to --out."""
    X = mixture(a.rows, a.dim)
    fn = METHODS[a.method]
    if a.method == "faiss":
        import faiss  # noqa: F401  (loaded before threadpool_info, so its BLAS is listed)
    if a.method == "allpairs":
        from steps.kernel.compiled import warm_up
        warm_up()  # numba's cache: compiled once per machine, not per run
    times, result = [], None
    for _ in range(a.repeat):
        began = time.perf_counter()
        result = fn(X, a.k, a.threads)
        times.append(time.perf_counter() - began)
    if result is not None and a.out:
        np.save(a.out + ".idx.npy", result[0])
        np.save(a.out + ".scores.npy", result[1])
    print(json.dumps({"seconds": times, "blas": blas_kernels(a.method)}))


def blas_kernels(method: str) -> str:
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
    # The BLAS each one calls: faiss its bundled one, scikit-learn scipy's, we and matmul numpy's.
    owner = {"faiss": "faiss", "sklearn": "scipy"}.get(method, "numpy")
    libs = [i for i in libs if owner in i["filepath"]] or libs
    return ", ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture', '?')}" for i in libs)


# ---- the parent: probing, timing, comparing ------------------------------------------------------------------


def call(method: str, rows: int, dim: int, k: int, threads: int, repeat: int, coretype: str, out: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    argv = [sys.executable, __file__, "--worker", method, "--rows", str(rows), "--dim", str(dim), "--k", str(k),
            "--threads", str(threads), "--repeat", str(repeat), "--out", out]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed (OPENBLAS_CORETYPE={coretype or 'unset'}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def runnable_coretypes() -> list[str]:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return [c for c in CORETYPES if not c or FLAGS[c] in flags]


def best_coretype(method: str, threads: int, dim: int) -> tuple[str, str]:
    """The OPENBLAS_CORETYPE under which `method` runs fastest here (probed on 20000 rows, k=10)."""
    probes = {}
    for coretype in runnable_coretypes():
        probes[coretype] = min(call(method, 20000, dim, 10, threads, 3, coretype)["seconds"])
    best = min(probes, key=probes.get)
    return best, ", ".join(f"{c or 'unset'} {t:.2f}s" for c, t in probes.items())


def agreement(X, ref, other, tol):
    """'identical', 'ties: n rows' (same scores rank by rank, different ids), or 'MISMATCH ...'."""
    ref_i, ref_s = ref
    idx, _ = other
    if np.array_equal(idx, ref_i):
        return "identical"
    differ = np.flatnonzero((idx != ref_i).any(axis=1))
    vecs = X[idx[differ]].astype(np.float64)
    theirs = np.sort(np.einsum("rkd,rd->rk", vecs, X[differ].astype(np.float64)), axis=1)[:, ::-1]
    bad = differ[(np.abs(theirs - ref_s[differ].astype(np.float64)) > tol).any(axis=1)]
    if len(bad):
        return f"MISMATCH in {len(bad)} rows (e.g. row {bad[0]})"
    return f"ties: {len(differ)} rows"


def environment(threads: int) -> list[str]:
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [f"date {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} {model}, {threads} threads "
            f"(cores available: {default_threads()}), load average {load:.1f} at the start",
            f"python {platform.python_version()}, numpy {np.__version__}"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=TABLE, help="ROWSxDIM ...")
    p.add_argument("--k", type=int, nargs="+", default=[10, 100])
    p.add_argument("--repeat", type=int, default=0, help="0: 3 up to 50000 x 128's work, else 1")
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--methods", nargs="+", default=["allpairs", "faiss", "matmul"], choices=list(METHODS))
    p.add_argument("--quick", action="store_true", help="5000 x 64, k=10, one repeat")
    p.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.method, a.k = a.worker, a.k[0]
        return worker(a)
    if a.quick:
        a.sizes, a.k, a.repeat = ["5000x64"], [10], 1
    threads = a.threads or default_threads()
    methods = [m for m in a.methods if m not in MODULES or importlib.util.find_spec(MODULES[m])]
    for m in set(a.methods) - set(methods):
        print(f"{m}: not installed, skipped (pip install -e '.[bench]' adds it)")
    print("\n".join(environment(threads)))
    coretypes = {}
    for m in methods:
        coretypes[m], probes = best_coretype(m, threads, 128)
        print(f"{m}: OPENBLAS_CORETYPE={coretypes[m] or 'unset'} (probe on 20000 x 128, k=10: {probes})")
    header = (f"{'method':<18} {'N':>7} {'D':>4} {'k':>4} {'seconds':>8} {'GFLOP/s':>8} {'faiss/this':>10} "
              f"{'of floor':>8}  {'BLAS kernel':<28} agreement")
    print("\n" + header + "\n" + "-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            rows, dim = map(int, size.lower().split("x"))
            repeat = a.repeat or (3 if rows * rows * dim <= 50000 ** 2 * 128 else 1)
            X = mixture(rows, dim)
            flops, tol = 2.0 * rows * rows * dim, 4 * dot_error_bound(dim)
            floor = None
            if "matmul" in methods:
                got = call("matmul", rows, dim, 1, threads, repeat, coretypes["matmul"])
                floor = statistics.median(got["seconds"]) / 2  # the symmetric half
                print(f"{'matmul (floor x2)':<18} {rows:>7} {dim:>4} {'-':>4} {2 * floor:8.2f} "
                      f"{flops / (2 * floor) / 1e9:8.1f} {'-':>10} {'-':>8}  {got['blas']:<28} -", flush=True)
            for k in a.k:
                results = {}
                for m in (m for m in methods if m != "matmul"):
                    out = str(Path(tmp) / f"{m}-{size}-{k}")
                    got = call(m, rows, dim, k, threads, repeat, coretypes[m], out)
                    results[m] = (statistics.median(got["seconds"]), got["blas"],
                                  (np.load(out + ".idx.npy"), np.load(out + ".scores.npy")))
                reference = results.get("allpairs")
                faiss_t = results["faiss"][0] if "faiss" in results else None
                for m, (t, blas, result) in results.items():
                    agree = "reference" if m == "allpairs" else (
                        agreement(X, reference[2], result, tol) if reference else "-")
                    vs_faiss = f"{faiss_t / t:10.2f}" if faiss_t else f"{'-':>10}"
                    of_floor = f"{floor / t:8.2f}" if floor and m == "allpairs" else f"{'-':>8}"
                    print(f"{m:<18} {rows:>7} {dim:>4} {k:>4} {t:8.2f} {flops / t / 1e9:8.1f} {vs_faiss} "
                          f"{of_floor}  {blas:<28} {agree}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
