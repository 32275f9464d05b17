"""Write the sample matrix data/sample/embeddings.parquet (reproducible: same seed, same numbers).

    python scripts/make_sample.py [--out data/sample/embeddings.parquet] [--rows 3000] [--dim 64] [--seed 7]

3000 x 64 float32 features `f00..f63` plus a string id column `item_id` ("item-00000", ...). The rows are a
gaussian mixture of 30 clusters, so each row's nearest neighbours are meaningful (mostly its own cluster).
To exercise the semantics it also holds exact duplicate rows (a duplicate is a real neighbour, scoring 1.0)
and two all-zero rows (no direction: no neighbours, in no one's list). Their positions are printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLUSTERS = 30
CLUSTER_SPREAD = 0.35  # within-cluster noise relative to the unit-length cluster centres
DUPLICATES = [(10, 2990), (11, 2991), (500, 2992), (1500, 2993), (2993, 2994)]  # (original, copy); 2993->2994: a triple
ZERO_ROWS = [1234, 2995]


def make_matrix(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    membership = rng.integers(0, CLUSTERS, size=rows)
    scale = rng.uniform(0.5, 2.0, size=(rows, 1))  # varied lengths: cosine must not care
    matrix = (centres[membership] + CLUSTER_SPREAD * rng.normal(size=(rows, dim)) / np.sqrt(dim)) * scale
    matrix = matrix.astype(np.float32)
    for original, copy in DUPLICATES:
        if copy < rows:
            matrix[copy] = matrix[original]
    for row in ZERO_ROWS:
        if row < rows:
            matrix[row] = 0.0
    return matrix


def to_table(matrix: np.ndarray) -> pa.Table:
    ids = pa.array([f"item-{i:05d}" for i in range(len(matrix))])
    features = [pa.array(matrix[:, j]) for j in range(matrix.shape[1])]
    names = ["item_id"] + [f"f{j:02d}" for j in range(matrix.shape[1])]
    return pa.Table.from_arrays([ids] + features, names=names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data/sample/embeddings.parquet")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    matrix = make_matrix(args.rows, args.dim, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(matrix), args.out, compression="zstd", row_group_size=1024, use_dictionary=False,
                   use_byte_stream_split=[f"f{j:02d}" for j in range(args.dim)])  # split float bytes compress ~25% better
    print(f"wrote {args.out}: {args.rows} rows x {args.dim}; duplicate rows (original, copy) {DUPLICATES}; "
          f"all-zero rows {ZERO_ROWS}; {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
