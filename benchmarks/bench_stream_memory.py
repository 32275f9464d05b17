"""Peak memory of Preprocess and Merge on a large matrix: both stream, so it follows the chunk size, not N or N*k.

    python benchmarks/bench_stream_memory.py                          # 1,000,000 x 128, k=100
    python benchmarks/bench_stream_memory.py --rows 200000 --k 10     # quicker

Runs each step program as SageMaker would (its own process, /opt/ml re-rooted by ALLPAIRS_OPT_ML), on the real
step code: Preprocess reads a float32 .npy of rows x dim; Merge reads 4 host shards of rows x k (random but
valid neighbours, as the Similarity step writes them) and writes the whole artifact (parquet edge list,
neighbors.npy, scores.npy). Reports each process's peak RSS (its VmHWM) next to the sizes that a
non-streaming step would have to hold. Everything goes under --workdir (default: a temporary folder, removed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from steps.io import sha256_file, write_json  # noqa: E402

MB = 1 << 20


# The step runs under this launcher, which records the process's own high-water mark (VmHWM) as it exits.
# (wait4's ru_maxrss would not do: Linux carries the parent's peak across fork and exec into the child's.)
_LAUNCHER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(open("/proc/self/status").read()))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_step(module: str, root: Path, args: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run `python -m <module>` with /opt/ml at `root`; return (seconds, peak RSS in MB)."""
    status = root / "proc-status.txt"
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(status), module, *args], cwd=REPO,
                          env={**os.environ, "ALLPAIRS_OPT_ML": str(root), **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed: {(root / 'output/failure').read_text()}")
    peak_kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return time.perf_counter() - began, peak_kb / 1024


def write_input(path: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    out = open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        out[lo: lo + n] = rng.standard_normal((n, dim), dtype=np.float32)
    out.flush()


def write_shards(model: Path, rows: int, k: int, fingerprint: str, hosts: int = 4) -> None:
    """Shards as the Similarity hosts write them: sorted scores, distinct neighbours, then the vouching JSON."""
    rng = np.random.default_rng(1)
    names = [f"algo-{i + 1}" for i in range(hosts)]
    for i, host in enumerate(names):
        start, stop = i * rows // hosts, (i + 1) * rows // hosts
        nb = open_memmap(model / f"shard-{host}.neighbors.npy", mode="w+", dtype=np.int64, shape=(stop - start, k))
        sc = open_memmap(model / f"shard-{host}.scores.npy", mode="w+", dtype=np.float32, shape=(stop - start, k))
        for lo in range(0, stop - start, 50_000):
            n = min(50_000, stop - start - lo)
            nb[lo: lo + n] = (start + lo + np.arange(n)[:, None] + 1 + np.arange(k)) % rows
            sc[lo: lo + n] = -np.sort(-rng.random((n, k), dtype=np.float32), axis=1)
        nb.flush()
        sc.flush()
        del nb, sc
        files = {f"shard-{host}.{kind}.npy": sha256_file(model / f"shard-{host}.{kind}.npy")
                 for kind in ("neighbors", "scores")}
        write_json(model / f"shard-{host}.json", {
            "format": "allpairs.shard", "version": 1, "host": host, "hosts": names, "start": start, "stop": stop,
            "k": k, "min_score": None, "input_fingerprint": fingerprint, "job": "bench-similarity",
            "resumed_rows": 0, "files": files, "seconds": 0.0, "cpu_seconds": 0.0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="allpairs-stream-"))
    try:
        pre = work / "pre"
        (pre / "processing/input/matrix").mkdir(parents=True, exist_ok=True)
        write_input(pre / "processing/input/matrix/X.npy", args.rows, args.dim)
        seconds, rss = run_step("steps.preprocess", pre, ["--input-uri", "X.npy", "--chunk-rows", str(args.chunk_rows)])
        normalized = pre / "processing/output/normalized"
        fingerprint = json.loads((normalized / "manifest.json").read_text())["fingerprint"]
        print(f"date {time.strftime('%Y-%m-%d %H:%M')}, {args.rows} x {args.dim}, k={args.k}, "
              f"chunk_rows={args.chunk_rows}")
        print(f"{'step':<11} {'seconds':>8} {'peak RSS MB':>12}   what a non-streaming step would hold")
        matrix_mb = args.rows * args.dim * 4 / MB
        print(f"{'Preprocess':<11} {seconds:>8.1f} {rss:>12.0f}   input matrix {matrix_mb:.0f} MB "
              f"(float64 work copy {2 * matrix_mb:.0f} MB); one chunk {args.chunk_rows * args.dim * 8 / MB:.0f} MB")

        merge = work / "merge"
        model = work / "model"
        model.mkdir(exist_ok=True)
        write_shards(model, args.rows, args.k, fingerprint)
        (merge / "processing/input").mkdir(parents=True, exist_ok=True)
        for name, target in (("shards", model), ("normalized", normalized)):
            link = merge / "processing/input" / name
            if not link.exists():
                link.symlink_to(target)
        seconds, rss = run_step("steps.merge", merge, ["--execution-id", "bench", "--artifact-uri", str(merge)])
        edges_mb = args.rows * args.k * 12 / MB
        print(f"{'Merge':<11} {seconds:>8.1f} {rss:>12.0f}   N x k results {edges_mb:.0f} MB "
              f"({args.rows * args.k:,} edges); ids {args.rows * 8 / MB:.0f} MB")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
