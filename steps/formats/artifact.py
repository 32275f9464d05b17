"""The artifact (format allpairs.artifact, version 1): written by Merge, checked by Register, read by users.

    neighbors.parquet   the edge list `id, neighbor_id, rank, score` with the original ids (padding not written)
    neighbors.npy       int32 (int64 past 2**31 rows), shape (rows, k): neighbour row indices, -1 where padded
    scores.npy          float32, shape (rows, k): their scores, NaN where padded
    report.html         the artifact at a glance, for a browser (steps/formats/report.py)
    manifest.json       format, counts, input and fingerprints, parameters, hosts, timings, and every file's
                        size and sha256: a manifest in place vouches for the files beside it
    registration.json   the registry entry (added by Register once it has registered the files)

The files stream in row order: memory holds one batch of BATCH_EDGES edges, never N x k.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import npy
from ..contract import ARTIFACT_FORMAT, MANIFEST, NEIGHBORS_NPY, NEIGHBORS_PARQUET, REPORT_HTML, SCORES_NPY
from ..errors import StepError
from ..io import atomic_path, sha256_file, write_json

FORMAT, VERSION = ARTIFACT_FORMAT
BATCH_EDGES = 1 << 20  # edges handled at once (about 60 MB of arrays): memory follows this, not N or N*k
DATA_FILES = (NEIGHBORS_PARQUET, NEIGHBORS_NPY, SCORES_NPY, REPORT_HTML)


def batch_rows(k: int) -> int:
    """Rows per batch the writer wants, so a batch holds about BATCH_EDGES edges."""
    return max(1, BATCH_EDGES // max(k, 1))


def write_files(batches: Iterable[tuple[int, np.ndarray, np.ndarray]], ids: pa.Array, rows: int, k: int,
                out: Path) -> dict:
    """Stream (first_row, neighbors, scores) batches, in row order and covering [0, rows), into the three data
    files; return the counts for the manifest."""
    index_dtype = np.int32 if rows < 2**31 else np.int64
    schema = pa.schema([("id", ids.type), ("neighbor_id", ids.type), ("rank", pa.int32()), ("score", pa.float32())])
    pairs = short_rows = 0
    with npy.row_writer(out / NEIGHBORS_NPY, index_dtype, (rows, k)) as all_n, \
            npy.row_writer(out / SCORES_NPY, np.float32, (rows, k)) as all_s, \
            atomic_path(out / NEIGHBORS_PARQUET) as tmp_p, pq.ParquetWriter(tmp_p, schema) as writer:
        for first, nb, sc in batches:
            all_n.write(nb)
            all_s.write(sc)
            found = nb >= 0
            pairs += int(found.sum())
            short_rows += int((~found[:, -1]).sum())
            r, c = np.nonzero(found)
            writer.write_table(pa.table({
                "id": ids.take(pa.array(first + r)),
                "neighbor_id": ids.take(pa.array(nb[r, c])),
                "rank": pa.array((c + 1).astype(np.int32)),
                "score": pa.array(sc[r, c]),
            }, schema=schema))
    return {"pairs": pairs, "rows_with_fewer_than_k": short_rows}


def files_entry(out: Path) -> dict:
    """Each data file's sha256 and size, as the manifest lists them."""
    return {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size} for name in DATA_FILES}


def write_manifest(out: Path, manifest: dict) -> None:
    write_json(out / MANIFEST, {"format": FORMAT, "version": VERSION, **manifest, "files": files_entry(out)})


def check(folder: Path, execution_id: str, artifact_uri: str) -> dict:
    """The artifact's manifest, once every file it lists is present, complete and unaltered."""
    path = folder / MANIFEST
    fix = "rerun the Merge step (its output upload may have failed or been altered)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise StepError(f"{artifact_uri}/{MANIFEST}: missing; the artifact is incomplete: {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{artifact_uri}/{MANIFEST}: not an artifact manifest ({exc}); {fix}") from None
    if (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise StepError(f"{artifact_uri}/{MANIFEST}: format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}; {fix}")
    if manifest.get("execution_id") != execution_id or manifest.get("artifact_uri") != artifact_uri:
        raise StepError(f"{artifact_uri}/{MANIFEST}: written for execution {manifest.get('execution_id')!r} at "
                        f"{manifest.get('artifact_uri')!r}, not this one ({execution_id!r} at {artifact_uri!r}): "
                        "another execution's artifact is never registered; rerun the Merge step")
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise StepError(f"{artifact_uri}/{name}: listed in {MANIFEST} but not there; {fix}")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise StepError(f"{artifact_uri}/{name}: {size} bytes, {MANIFEST} says {entry['bytes']}; {fix}")
        if sha256_file(file) != entry["sha256"]:
            raise StepError(f"{artifact_uri}/{name}: SHA-256 differs from {MANIFEST}; {fix}")
    return manifest
