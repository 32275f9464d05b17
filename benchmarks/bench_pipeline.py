"""End to end: `python -m pipeline run` on a generated matrix, per host count, against faiss's search alone.

    python benchmarks/bench_pipeline.py                      # 200000 x 128, TopK 10, InstanceCount 1, 4 and 8
    python benchmarks/bench_pipeline.py --rows 50000 --hosts 1 --faiss    # the whole run vs faiss's search
    python benchmarks/bench_pipeline.py --rows 20000 --hosts 1 2 --cold   # also a run with empty caches

For each host count: wall seconds of the whole command and of each step (from the execution record), the
similarity hosts' CPU seconds summed (from the artifact manifest; every thread of each host process), the
bytes of their shards (the partial lists Merge reads), and whether every artifact data file is identical to
the first host count's (sha256). "Distribution adds no work" means the CPU sum stays flat as hosts are added.
The simulated hosts share this machine's cores, each pinned to its share (pipeline/local/hosts.py), so the
CPU sum measures work, not oversubscription; wall time with more hosts than cores is not a speed-up measure.

Caches: runs use the definition cache (~/.cache/allpairs) and numba's cache as a user's second run does; the
first run pays for both once. --cold adds a 1-host run with both caches empty: what a first run costs.
--faiss times faiss IndexFlatIP's search alone (k+1 neighbours of every row, index built outside the clock)
on the same matrix, in its own process with its fastest OPENBLAS_CORETYPE (benchmarks/bench_kernel.py).
Everything is written under --workdir (default: a temporary folder, removed afterwards).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.bench_kernel import best_coretype, call, mixture  # noqa: E402
from steps.contract import ARTIFACT_DATA_FILES  # noqa: E402


def run_pipeline(data: Path, workdir: Path, hosts: int, k: int, tag: str, env: dict | None = None) -> dict:
    out, work = workdir / f"out-{tag}", workdir / f"work-{tag}"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--workdir", str(work),
                    "--param", f"InputData={data}", "--param", f"OutputPrefix={out}",
                    "--param", f"InstanceCount={hosts}", "--param", f"TopK={k}"],
                   cwd=REPO, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - began
    (record_path,) = (work / "executions").glob("*/execution.json")
    record = json.loads(record_path.read_text())
    (artifact,) = out.glob("*/artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    shard_bytes = sum(p.stat().st_size for p in out.glob("*/**/shard-*") if p.is_file())
    digest = hashlib.sha256()
    for name in ARTIFACT_DATA_FILES:
        digest.update((artifact / name).read_bytes())
    return {
        "hosts": hosts, "wall": wall, "steps": {s["name"]: s["seconds"] for s in record["steps"]},
        "cpu": sum(h.get("cpu_seconds") or 0.0 for h in manifest["hosts"]), "shard_bytes": shard_bytes,
        "artifact_bytes": sum((artifact / n).stat().st_size for n in ARTIFACT_DATA_FILES),
        "digest": digest.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--faiss", action="store_true", help="also time faiss's search alone on the same matrix")
    parser.add_argument("--cold", action="store_true", help="also a 1-host run with empty caches")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="allpairs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        data = workdir / "matrix.npy"
        np.save(data, mixture(args.rows, args.dim))
        print(f"date {time.strftime('%Y-%m-%d %H:%M')}, {args.rows} x {args.dim}, TopK {args.k}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        run_pipeline(data, workdir, 1, args.k, "warm-up")  # fills the definition and numba caches
        results = [run_pipeline(data, workdir, h, args.k, str(h)) for h in args.hosts]
        if args.cold:
            empty = {"ALLPAIRS_CACHE_DIR": str(workdir / "empty-cache"), "NUMBA_CACHE_DIR": str(workdir / "empty-numba")}
            cold = run_pipeline(data, workdir, 1, args.k, "cold", empty)
        print(f"{'hosts':>5} {'wall s':>7} {'rows/s':>8} {'Preprocess':>11} {'Similarity':>11} {'Merge':>10} "
              f"{'Register':>9} {'overhead':>8} {'host CPU s':>10} {'vs 1 host':>9} {'shard MB':>9} {'identical':>9}")
        base = results[0]
        for r in results + ([dict(cold, hosts="1 cold")] if args.cold else []):
            steps = r["steps"]
            overhead = r["wall"] - sum(steps.values())
            cells = " ".join(f"{steps[name]:>6.1f} {100 * steps[name] / r['wall']:>3.0f}%"
                             for name in ("Preprocess", "Similarity", "Merge", "Register"))
            print(f"{r['hosts']:>5} {r['wall']:>7.1f} {args.rows / r['wall']:>8.0f} {cells} {overhead:>7.1f}s "
                  f"{r['cpu']:>10.1f} {r['cpu'] / base['cpu']:>8.2f}x {r['shard_bytes'] / 2**20:>9.1f} "
                  f"{str(r['digest'] == base['digest']):>9}")
        print(f"artifact data files: {base['artifact_bytes'] / 2**20:.1f} MB")
        if args.faiss:
            threads = os.cpu_count() or 1
            coretype, probes = best_coretype("faiss", threads, args.dim)
            seconds = min(call("faiss", args.rows, args.dim, args.k, threads, 1, coretype)["seconds"])
            print(f"faiss IndexFlatIP search alone (OPENBLAS_CORETYPE={coretype or 'unset'}; probes: {probes}): "
                  f"{seconds:.1f} s; the whole 1-host run / faiss search: {base['wall'] / seconds:.2f}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
