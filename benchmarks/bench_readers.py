"""How fast Preprocess's readers turn each input form into float64 batches (rows/s), against the dense .npy read
in the same run (the reference): CSV, compressed CSV, TSV, parquet with one column per feature, parquet with one
vector column (list and fixed_size_list), float16 .npy.

    python benchmarks/bench_readers.py                         # 200,000 x 64
    python benchmarks/bench_readers.py --rows 50000 --dim 384  # embedding-shaped
    python benchmarks/bench_readers.py --repo /path/to/other/clone   # the same files through another tree's readers
                                                                     # (before/after a change; forms it refuses say so)

Each form is read twice and the faster time kept (the machine is shared: ratios to the .npy line matter,
not the absolute rows/s). The load average is printed.
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def write_forms(folder: Path, x: np.ndarray) -> dict[str, Path]:
    frame = pd.DataFrame(x).add_prefix("f")
    forms = {}

    def form(name: str, filename: str, write) -> None:
        path = folder / name
        path.mkdir()
        write(path / filename)
        forms[name] = path

    form("npy float32", "m.npy", lambda p: np.save(p, x))
    form("npy float16", "m.npy", lambda p: np.save(p, x.astype(np.float16)))
    form("parquet columns", "m.parquet", lambda p: pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), p))
    form("parquet list<float>", "m.parquet",
         lambda p: pq.write_table(pa.table({"embedding": pa.array(list(x), pa.list_(pa.float32()))}), p))
    form("parquet fixed_size_list", "m.parquet",
         lambda p: pq.write_table(pa.table({"embedding": pa.array(list(x), pa.list_(pa.float32(), x.shape[1]))}), p))
    form("csv", "m.csv", lambda p: frame.to_csv(p, index=False, float_format="%.9g"))
    form("tsv", "m.tsv", lambda p: frame.to_csv(p, index=False, sep="\t", float_format="%.9g"))
    form("csv.gz", "m.csv.gz", lambda p: p.write_bytes(gzip.compress(
        frame.to_csv(index=False, float_format="%.9g").encode(), compresslevel=6)))
    return forms


def read_all(folder: Path) -> tuple[float, int]:
    from steps.readers import batch_rows_for, iter_matrix, plan_matrix

    started = time.perf_counter()
    plan = plan_matrix(folder)
    rows = sum(len(batch.values) for batch in iter_matrix(plan, batch_rows_for(plan.dim, 65536)))
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repo", type=Path, default=REPO, help="the tree whose steps/readers are measured")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    import steps
    from steps.errors import StepError

    x = np.random.default_rng(0).normal(size=(args.rows, args.dim)).astype(np.float32)
    print(f"readers of {Path(steps.__file__).parent.parent}: {args.rows:,} rows x {args.dim}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        forms = write_forms(Path(tmp), x)
        reference = None
        print(f"{'form':<26}{'MB':>9}{'seconds':>10}{'rows/s':>13}{'vs npy':>9}")
        for name, folder in forms.items():
            size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            try:
                seconds = min(read_all(folder)[0] for _ in range(2))
            except StepError as exc:
                print(f"{name:<26}{size:>9.1f}  refused: {str(exc)[:70]}")
                continue
            reference = reference or seconds
            print(f"{name:<26}{size:>9.1f}{seconds:>10.2f}{args.rows / seconds:>13,.0f}{seconds / reference:>8.1f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
