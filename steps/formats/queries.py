"""The queries (format allpairs.queries, version 1; queries mode): written by Preprocess, read by Similarity (the
chunk files) and Merge (everything).

    chunks/query-<start>-<stop>.npz   one file per run of query rows [start, stop) (12 digits each), with
                                      `vectors` float32 (rows, dim), L2-normalized like the corpus; `exclude`
                                      int64 (rows,): the corpus row each query may not have as a neighbour (the
                                      row with its own id, under the self rule "exclude-same-id"), -1 for none;
                                      `header`: JSON (format, version, start, stop, rows, dim, the fingerprint)
    ids.parquet                       `id` and `input_row` of every query row, in row order (as the corpus's)
    manifest.json                     written last: rows, dim, every chunk file (rows, sha256), the ids, counts,
                                      the self rule, the query input and the corpus's fingerprint

Why self-contained files: the training channel of the chunks is ShardedByS3Key, so each host receives only some
of the objects under the prefix, never the manifest. A host knows its rows from the files it got (their names
and headers agree, or the file is refused) and never assumes which ones those are.

Why the files are balanced by count: SageMaker splits ShardedByS3Key by objects, not bytes or rows (each host
about 1/n of them). So the query rows are cut into F files whose row counts differ by at most one (file i holds
rows [i*Q//F, (i+1)*Q//F)), F = the spec's queries.chunk_files (default 64) unless fewer rows than that, or more
files where one would not fit Preprocess's memory budget. A host then gets floor(F/H) or ceil(F/H) files: equal
work when InstanceCount divides F, otherwise the busiest host has at most one file more than the least busy.

The fingerprint (what shards and checkpoints are keyed by) covers the vectors, the exclusions, the ids and the
corpus's fingerprint: files of another query set or another corpus are never mixed in.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..contract import IDS_FILE, MANIFEST, QUERIES_FORMAT, QUERY_CHUNKS, SELF_RULES
from ..errors import StepError
from ..io import atomic_path, sha256_file, sha256_text, write_json
from .normalized import Normalized, read_id_columns

FORMAT, VERSION = QUERIES_FORMAT
_CHUNK = re.compile(r"query-(\d{12})-(\d{12})\.npz")


def chunk_name(start: int, stop: int) -> str:
    return f"query-{start:012d}-{stop:012d}.npz"


def file_count(rows: int, wanted: int, max_rows_per_file: int) -> int:
    """How many chunk files: `wanted`, unless fewer rows than that, or more where a file would not fit."""
    return max(1, min(rows, wanted), -(-rows // max(1, max_rows_per_file)))


def file_bounds(rows: int, files: int) -> list[tuple[int, int]]:
    """File i holds rows [i*rows//files, (i+1)*rows//files): row counts differ by at most one."""
    return [(i * rows // files, (i + 1) * rows // files) for i in range(files)]


def exclusions(query_ids: pa.Array, corpus_ids: pa.Array, rule: str) -> np.ndarray:
    """Per query row, the corpus row it may not have as a neighbour (-1: none): under "exclude-same-id" the
    corpus row with the same id (ids of different types never match)."""
    if rule not in SELF_RULES:
        raise StepError(f"self rule {rule!r}: must be one of {', '.join(SELF_RULES)}")
    if rule == "keep" or query_ids.type != corpus_ids.type:
        return np.full(len(query_ids), -1, np.int64)
    index = pd.Index(corpus_ids.to_pandas())
    return index.get_indexer(query_ids.to_pandas()).astype(np.int64)


# ---- writing ---------------------------------------------------------------------------------------------------


def write_queries(normalized: Normalized, corpus: Normalized, out: Path, files: int, rule: str,
                  max_rows_per_file: int) -> dict:
    """The queries folder from the normalized query rows (a scratch Preprocess output) and the corpus's; all or
    nothing: built in `out`/.partial and moved into place, the manifest last. Returns the manifest."""
    staging = out / ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / QUERY_CHUNKS).mkdir(parents=True)
    try:
        table = read_id_columns(normalized)
        exclude = exclusions(table.column("id").combine_chunks(), read_id_columns(corpus).column("id").combine_chunks(),
                             rule)
        ids_sha = sha256_file(normalized.ids_path())
        count = file_count(normalized.rows, files, max_rows_per_file)
        bounds = file_bounds(normalized.rows, count)
        content = [_content_hash(normalized, exclude, a, b) for a, b in bounds]
        fingerprint = sha256_text(FORMAT, str(VERSION), *content, ids_sha, corpus.fingerprint, rule)
        entries = []
        for (start, stop), digest in zip(bounds, content):
            name = f"{QUERY_CHUNKS}/{chunk_name(start, stop)}"
            header = {"format": FORMAT, "version": VERSION, "start": start, "stop": stop, "rows": normalized.rows,
                      "dim": normalized.dim, "fingerprint": fingerprint, "content": digest}
            with atomic_path(staging / name) as tmp, open(tmp, "wb") as f:
                np.savez(f, vectors=_rows(normalized, start, stop), exclude=exclude[start:stop],
                         header=np.array(json.dumps(header, sort_keys=True)))
            entries.append({"file": name, "start": start, "stop": stop, "sha256": sha256_file(staging / name)})
        shutil.copyfile(normalized.ids_path(), staging / IDS_FILE)
        pre = normalized.manifest
        manifest = {
            "format": FORMAT, "version": VERSION, "rows": normalized.rows, "dim": normalized.dim, "files": entries,
            "ids": {"file": IDS_FILE, "source": pre["ids"].get("source"), "type": pre["ids"].get("type"),
                    "sha256": ids_sha},
            "self_rule": rule, "excluded": int((exclude >= 0).sum()),
            "zero_rows": pre.get("zero_rows", 0), "dropped_rows": pre.get("dropped_rows", 0),
            "dropped_sample": pre.get("dropped_sample", []), "non_finite": pre.get("non_finite"),
            "input": pre["input"], "corpus_fingerprint": corpus.fingerprint, "fingerprint": fingerprint,
        }
        write_json(staging / MANIFEST, manifest)
        (out / MANIFEST).unlink(missing_ok=True)  # the old manifest out first, the new one in last
        shutil.rmtree(out / QUERY_CHUNKS, ignore_errors=True)
        os.replace(staging / QUERY_CHUNKS, out / QUERY_CHUNKS)
        os.replace(staging / IDS_FILE, out / IDS_FILE)
        os.replace(staging / MANIFEST, out / MANIFEST)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _rows(normalized: Normalized, start: int, stop: int) -> np.ndarray:
    parts, at = [], 0
    for chunk in normalized.chunks:
        lo, hi = max(start, at), min(stop, at + len(chunk))
        if lo < hi:
            parts.append(np.asarray(chunk[lo - at: hi - at], dtype=np.float32))
        at += len(chunk)
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, normalized.dim), np.float32))


def _content_hash(normalized: Normalized, exclude: np.ndarray, start: int, stop: int) -> str:
    digest = hashlib.sha256()
    digest.update(_rows(normalized, start, stop).tobytes())
    digest.update(np.ascontiguousarray(exclude[start:stop], "<i8").tobytes())
    return digest.hexdigest()


# ---- reading ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryChunk:
    """One chunk file as a host received it: query rows [start, stop) of `rows`."""

    path: Path
    start: int
    stop: int
    rows: int
    dim: int
    fingerprint: str
    sha256: str
    vectors: np.ndarray  # float32 (stop - start, dim)
    exclude: np.ndarray  # int64 (stop - start,), -1 for none


def chunk_files(channel: Path) -> list[Path]:
    """The chunk files a host received (any of them, in name order = row order); other objects are an error."""
    if not channel.is_dir():
        return []
    found, other = [], []
    for path in sorted(p for p in channel.rglob("*") if p.is_file()):
        (found if _CHUNK.fullmatch(path.name) else other).append(path)
    if other:
        raise StepError(f"{other[0]}: not a query chunk file (query-<start>-<stop>.npz); the queries channel holds "
                        "only Preprocess's queries/chunks: rerun the Preprocess step")
    return found


def read_chunk(path: Path, corpus_rows: int, dim: int) -> QueryChunk:
    """A chunk file, checked: its name, header and arrays agree, its exclusions name corpus rows."""
    fix = "rerun the Preprocess step"
    match = _CHUNK.fullmatch(path.name)
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            vectors, exclude = z["vectors"], z["exclude"]
        start, stop = int(header["start"]), int(header["stop"])
        if (header.get("format"), header.get("version")) != (FORMAT, VERSION):
            raise ValueError(f"not an {FORMAT} version {VERSION} chunk")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise StepError(f"{path}: not a readable query chunk ({exc}); {fix}") from None
    if match is None or (int(match[1]), int(match[2])) != (start, stop):
        raise StepError(f"{path}: its header says rows [{start}, {stop}), its name does not; {fix}")
    if vectors.dtype != np.float32 or vectors.shape != (stop - start, dim) or int(header["dim"]) != dim:
        raise StepError(f"{path}: holds vectors {vectors.dtype}{vectors.shape}, expected float32"
                        f"({stop - start}, {dim}) like the corpus; {fix}")
    if exclude.dtype != np.int64 or exclude.shape != (stop - start,) or \
            ((exclude < -1) | (exclude >= corpus_rows)).any():
        raise StepError(f"{path}: its exclusions are not corpus rows of this corpus ({corpus_rows} rows); {fix}")
    return QueryChunk(path, start, stop, int(header["rows"]), dim, str(header["fingerprint"]),
                      hashlib.sha256(data).hexdigest(), np.ascontiguousarray(vectors), exclude)


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
            raise ValueError(f"not an {FORMAT} version {VERSION} manifest")
        int(manifest["rows"]), str(manifest["fingerprint"]), str(manifest["ids"]["file"])  # noqa: B018
        for entry in manifest["files"]:
            str(entry["file"]), int(entry["start"]), int(entry["stop"]), str(entry["sha256"])  # noqa: B018
    except FileNotFoundError:
        raise StepError(f"{path}: missing; the Preprocess output of the queries is incomplete (rerun the "
                        "Preprocess step)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{path}: not a valid queries manifest ({exc}); rerun the Preprocess step") from None
    return manifest


def read_query_ids(root: Path, manifest: dict) -> pa.Table:
    """`id` and `input_row` of every query row, checked against the manifest."""
    import pyarrow.parquet as pq

    path = Path(root) / manifest["ids"]["file"]
    if not path.exists() or sha256_file(path) != manifest["ids"]["sha256"]:
        raise StepError(f"{path}: missing or its checksum differs from the queries manifest; rerun the Preprocess "
                        "step")
    table = pq.read_table(path, columns=["id", "input_row"])
    if table.num_rows != int(manifest["rows"]):
        raise StepError(f"{path}: {table.num_rows} ids for {manifest['rows']} query rows; rerun the Preprocess step")
    return table
