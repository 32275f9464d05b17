"""Lookups on an artifact: `Artifact.neighbors(id)` against reading the edge list whole (what a user without the
API does), on a generated 1M-row, k=10 artifact written by the artifact writer itself (the format Merge writes).

    python benchmarks/bench_lookup.py                 # 1,000,000 rows, k=10, string ids in random order
    python benchmarks/bench_lookup.py --rows 200000 --k 100

Reports, each the median of several runs: one lookup in a freshly opened artifact (opening included: the
manifest, then the footer and one row group of id_index.parquet and of neighbors.parquet), one lookup in an
artifact already open, 1000 ids in one call, and the reference, pandas reading neighbors.parquet and
filtering one id, measured in the same run. Then the same cold lookup from S3 (moto, in process): the bytes and
requests it fetched, against the artifact's size (moto's timings say nothing of S3's, so none are shown).
Everything is written under --workdir (default: a temporary folder, removed afterwards).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import allpairs
from steps.formats import artifact as fmt


def write_artifact(out: Path, rows: int, k: int, seed: int = 0) -> list[str]:
    """A complete artifact of `rows` rows: random neighbours, sorted scores, ids in no particular order."""
    rng = np.random.default_rng(seed)
    ids = [f"item-{i:08d}" for i in rng.permutation(rows)]
    out.mkdir(parents=True)
    size = fmt.batch_rows(k)

    def batches():
        for lo in range(0, rows, size):
            n = min(size, rows - lo)
            nb = rng.integers(0, rows, (n, k), dtype=np.int64)
            sc = -np.sort(-rng.random((n, k), dtype=np.float32), axis=1)
            yield lo, nb, sc

    counts = fmt.write_files(batches(), pa.array(ids), rows, k, out, input_rows=pa.array(np.arange(rows)))
    fmt.write_manifest(out, {"rows": rows, "dim": 128, "k": k, "top_k": k, "threshold": None,
                             "ids": {"source": "column item_id", "type": "string"}, "input": {"uri": "generated"},
                             "counts": {"zero_rows": 0, "dropped_rows": 0, **counts}})
    return ids


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def s3_cost(out: Path, ids: list[str], rng) -> tuple[int, int]:
    """(bytes, requests) a cold lookup fetches from S3 (moto in process)."""
    import boto3
    from moto import mock_aws

    for var, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(var, value)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        for file in out.iterdir():
            s3.upload_file(str(file), "bench", f"artifact/{file.name}")
        art = allpairs.open("s3://bench/artifact")
        handler = art.filesystem.handler
        before = handler.bytes_read, handler.requests
        art.neighbors(ids[int(rng.integers(len(ids)))])
        return handler.bytes_read - before[0], handler.requests - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="allpairs-lookup-"))
    rng = np.random.default_rng(1)
    try:
        began = time.perf_counter()
        ids = write_artifact(work / "artifact", args.rows, args.k)
        written = time.perf_counter() - began
        out = work / "artifact"
        sizes = {f.name: f.stat().st_size for f in out.iterdir()}
        total = sum(sizes.values())
        print(f"date {time.strftime('%Y-%m-%d %H:%M')}, {args.rows} rows, k={args.k}, {args.rows * args.k} edges; "
              f"artifact {total / 1e6:.1f} MB written in {written:.1f} s "
              f"(neighbors.parquet {sizes['neighbors.parquet'] / 1e6:.1f} MB, id_index.parquet "
              f"{sizes['id_index.parquet'] / 1e6:.1f} MB); {os.cpu_count()} cores")
        pick = lambda: ids[int(rng.integers(len(ids)))]  # noqa: E731

        def cold():
            with allpairs.open(out) as art:
                art.neighbors(pick())

        warm_art = allpairs.open(out)
        warm_art.neighbors(pick())
        batch = [pick() for _ in range(1000)]

        def reference():
            import pandas as pd

            frame = pd.read_parquet(out / "neighbors.parquet")
            return frame[frame["id"] == pick()]

        rows = [("reference: pandas reads neighbors.parquet, filters one id", median_seconds(reference, 3)),
                ("allpairs.open + neighbors(one id), cold", median_seconds(cold, args.repeat)),
                ("neighbors(one id), artifact open", median_seconds(lambda: warm_art.neighbors(pick()), args.repeat)),
                ("neighbors(1000 ids), artifact open", median_seconds(lambda: warm_art.neighbors(batch), 5))]
        ref = rows[0][1]
        print(f"{'what':<58} {'ms':>9} {'reference/this':>15}")
        for what, seconds in rows:
            print(f"{what:<58} {seconds * 1e3:>9.1f} {ref / seconds:>15.1f}")
        fetched, requests = s3_cost(out, ids, rng)
        print(f"S3 (moto): a cold lookup fetched {fetched / 1e6:.2f} MB in {requests} requests, "
              f"{100 * fetched / total:.1f}% of the artifact's {total / 1e6:.1f} MB")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
