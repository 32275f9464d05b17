"""Peak memory of Preprocess and Merge on a large matrix: both stream, so it follows the chunk size, not N or N*k.

    python benchmarks/bench_stream_memory.py                          # 1,000,000 x 128, k=100
    python benchmarks/bench_stream_memory.py --rows 200000 --k 10     # quicker

Runs each step program as SageMaker would (its own process, /opt/ml re-rooted by ALLPAIRS_OPT_ML), on the real
step code: Preprocess reads a float32 .npy of rows x dim; Merge reads 4 host shards holding the partial lists
4 Similarity hosts write (the real grid and coverage, random but valid neighbours), combines every row's lists
and writes the whole artifact (parquet edge list, neighbors.npy, scores.npy, rows.parquet,
id_index.parquet). Reports each process's peak RSS (its VmHWM) next to the sizes that a
non-streaming step would have to hold. Everything goes under --workdir (default: a temporary folder, removed).
"""
from __future__ import annotations

import argparse
import contextlib
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
from steps.contract import FAILURE_FILES, PROCESSING  # noqa: E402
from steps.formats import shards  # noqa: E402
from steps.kernel import Grid, KernelConfig, host_passes  # noqa: E402

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
        raise SystemExit(f"{module} failed: {(root / FAILURE_FILES[PROCESSING]).read_text()}")
    peak_kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return time.perf_counter() - began, peak_kb / 1024


def write_input(path: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    out = open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        out[lo: lo + n] = rng.standard_normal((n, dim), dtype=np.float32)
    out.flush()


def write_shards(model: Path, rows: int, dim: int, k: int, fingerprint: str, hosts: int = 4) -> int:
    """Shards with the lists the Similarity hosts write (the real grid, passes and coverage), filled with random
    but valid neighbours (sorted scores, distinct rows): Merge does all its work on them. Returns their rows."""
    grid = Grid.for_rows(rows)
    names = [f"algo-{i + 1}" for i in range(hosts)]
    rng = np.random.default_rng(1)
    total = 0
    for h, host in enumerate(names):
        lists = [(b, columns) for blocks in host_passes(grid, h, hosts, KernelConfig(k), dim)
                 for layout in [grid.pass_layout(blocks)]
                 for b, columns in [*layout.mirrors.items(), *layout.own.items()]]
        length = sum(grid.span(b)[1] - grid.span(b)[0] for b, _ in lists)
        with contextlib.ExitStack() as stack:
            writer = shards.ShardWriter(model, host, length, k, stack)
            for b, columns in lists:
                start, stop = grid.span(b)
                n = stop - start
                nb = (start + np.arange(n)[:, None] + 1 + rng.integers(0, rows, 1) + np.arange(k)) % rows
                sc = -np.sort(-rng.random((n, k), dtype=np.float32), axis=1)
                writer.add(start, stop, columns, iter([(nb, sc)]))
        shards.write_meta(model, writer, names, grid.describe(), None, fingerprint, "bench-similarity", 0, 0.0, 0.0)
        total += length
    return total


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
        list_rows = write_shards(model, args.rows, args.dim, args.k, fingerprint)
        (merge / "processing/input").mkdir(parents=True, exist_ok=True)
        for name, target in (("shards", model), ("normalized", normalized)):
            link = merge / "processing/input" / name
            if not link.exists():
                link.symlink_to(target)
        seconds, rss = run_step("steps.merge", merge, ["--execution-id", "bench", "--artifact-uri", str(merge)])
        edges_mb = args.rows * args.k * 12 / MB
        print(f"{'Merge':<11} {seconds:>8.1f} {rss:>12.0f}   N x k results {edges_mb:.0f} MB "
              f"({args.rows * args.k:,} edges); the 4 hosts' partial lists {list_rows * args.k * 12 / MB:.0f} MB "
              f"({list_rows / args.rows:.1f} lists per row); ids {args.rows * 8 / MB:.0f} MB")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
