"""End to end: `python -m pipeline run` on a generated matrix; rows per second and each step's share of the time.

    python benchmarks/bench_pipeline.py                      # 200000 x 128, TopK 10, InstanceCount 1 and 4
    python benchmarks/bench_pipeline.py --rows 20000 --hosts 1 2

For each host count it reports wall seconds per step (from the execution record), rows per second of the whole
run, and the similarity hosts' CPU seconds summed (from the artifact manifest): "distribution adds no work"
means that sum stays flat as the host count grows. It also checks the artifacts are identical (sha256).
Everything is written under --workdir (default: a temporary folder, removed afterwards).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_matrix(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """A seeded gaussian mixture (what embeddings look like), written in slices to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for lo in range(0, rows, 65536):
        n = min(65536, rows - lo)
        out[lo: lo + n] = centres[rng.integers(0, 100, n)] + 0.8 * rng.standard_normal((n, dim), dtype=np.float32)
    out.flush()


def run_pipeline(data: Path, workdir: Path, hosts: int, k: int) -> dict:
    out = workdir / f"out-{hosts}"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--workdir", str(workdir / f"work-{hosts}"),
                    "--param", f"InputData={data}", "--param", f"OutputPrefix={out}",
                    "--param", f"InstanceCount={hosts}", "--param", f"TopK={k}"],
                   cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - began
    (record_path,) = (workdir / f"work-{hosts}" / "executions").glob("*/execution.json")
    record = json.loads(record_path.read_text())
    (artifact,) = out.glob("*/artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {
        "hosts": hosts, "wall": wall,
        "steps": {s["name"]: s["seconds"] for s in record["steps"]},
        "cpu": sum(h.get("cpu_seconds") or 0.0 for h in manifest["hosts"]),
        "digest": hashlib.sha256((artifact / "neighbors.npy").read_bytes()
                                 + (artifact / "scores.npy").read_bytes()).hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="allpairs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        data = workdir / "matrix.npy"
        make_matrix(data, args.rows, args.dim)
        print(f"date {time.strftime('%Y-%m-%d %H:%M')}, {args.rows} x {args.dim}, TopK {args.k}")
        print(f"{'hosts':>5} {'wall s':>8} {'rows/s':>9} {'Preprocess':>11} {'Similarity':>11} {'Merge':>8} "
              f"{'overhead':>9} {'host CPU s':>11}")
        results = [run_pipeline(data, workdir, h, args.k) for h in args.hosts]
        for r in results:
            steps = r["steps"]
            overhead = r["wall"] - sum(steps.values())
            share = {name: 100 * seconds / r["wall"] for name, seconds in steps.items()}
            print(f"{r['hosts']:>5} {r['wall']:>8.1f} {args.rows / r['wall']:>9.0f} "
                  f"{steps['Preprocess']:>6.1f} {share['Preprocess']:>3.0f}% "
                  f"{steps['Similarity']:>6.1f} {share['Similarity']:>3.0f}% "
                  f"{steps['Merge']:>4.1f} {share['Merge']:>2.0f}% {overhead:>8.1f}s {r['cpu']:>11.1f}")
        base = results[0]
        for r in results[1:]:
            print(f"host CPU, {r['hosts']} hosts / {base['hosts']}: {r['cpu'] / base['cpu']:.2f}x; "
                  f"artifact identical: {r['digest'] == base['digest']}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
