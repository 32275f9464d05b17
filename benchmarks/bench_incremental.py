"""Incremental rerun against a full run: wall and CPU seconds for a corpus that grew by a few percent.

    python benchmarks/bench_incremental.py --rows 200000 --dim 128 --new 0.02 --k 10

The previous corpus (seeded gaussian mixture, unit float32 rows) gets --new x rows added at random positions
(the old rows keep their order). Measured in the same run, one after the other: the full computation of the new
corpus (steps.kernel.all_pairs, every pair once, as InstanceCount=1 computes it) and the incremental one
(steps/incremental.py: the digests of the new rows, the plan, the query passes), both on every core; the results
are checked byte-identical. The previous lists are computed first and not timed. CPU seconds are the process's
(all its threads). Prints the load average before and after: the machine is shared.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from steps.incremental import Previous, apply_update, plan_update, row_digests  # noqa: E402
from steps.kernel import Corpus, KernelConfig, all_pairs  # noqa: E402


def mixture(rng, rows: int, dim: int, centres: np.ndarray) -> np.ndarray:
    X = centres[rng.integers(0, len(centres), rows)] + 0.8 * rng.standard_normal((rows, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def digest(nb: np.ndarray, sc: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(nb).tobytes() + np.ascontiguousarray(sc).tobytes()).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows of the previous corpus")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--new", type=float, default=0.02, help="rows added, as a fraction of --rows")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--budget-mb", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((100, args.dim))
    old = mixture(rng, args.rows, args.dim, centres)
    added = int(round(args.rows * args.new))
    where = np.sort(rng.integers(0, args.rows + 1, added))
    new = np.insert(old, where, mixture(rng, added, args.dim, centres), axis=0)
    old_ids = np.arange(args.rows, dtype=np.int64)
    new_ids = np.insert(old_ids, where, np.arange(args.rows, args.rows + added))
    config = KernelConfig(args.k, None, args.budget_mb << 20, 0)
    label = "allpairs.normalized 2"

    (old_nb, old_sc), wall, _ = timed(lambda: all_pairs(Corpus([old]), config))
    print(f"previous: {args.rows} x {args.dim}, k={args.k}: {wall:.1f} s (not counted)", flush=True)
    previous = Previous(old_ids, row_digests(Corpus([old])), old_nb, old_sc, args.k, None, label)

    (full_nb, full_sc), full_wall, full_cpu = timed(lambda: all_pairs(Corpus([new]), config))
    print(f"full: {len(new)} rows: {full_wall:.1f} s wall, {full_cpu:.1f} s CPU", flush=True)

    def incremental():
        corpus = Corpus([new])
        update = plan_update(previous, new_ids, row_digests(corpus), args.k, None, label)
        assert not isinstance(update, str), update
        return update, apply_update(previous, update, corpus, config)

    (update, (inc_nb, inc_sc)), inc_wall, inc_cpu = timed(incremental)
    same = digest(inc_nb, inc_sc) == digest(full_nb, full_sc)
    print(f"incremental: {update.added} added, {update.lost} lost a neighbour, {len(update.fresh)} fresh rows, "
          f"{len(update.clean)} clean: {inc_wall:.1f} s wall, {inc_cpu:.1f} s CPU", flush=True)
    print(f"incremental / full: wall {inc_wall / full_wall:.1%}, CPU {inc_cpu / full_cpu:.1%}; "
          f"byte-identical: {'yes' if same else 'NO'}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
