"""The Preprocess output (the `normalized` folder): written by Preprocess, read by Similarity and Merge.

    chunks/chunk-000000.npy ...   float32, C-contiguous, L2-normalized rows (all-zero rows stay all-zero)
                                  or, for sparse input ("layout": "sparse"), chunks/chunk-000000.npz ...: the
                                  same rows in CSR form (sparse_chunks.py, its own format and version)
    ids.parquet                   `id` (string or int64) and `input_row` (int64: the row's 0-based position in
                                  the input, all files in key order, counted before dropped rows), one row per
                                  matrix row, in row order
    manifest.json                 written last; describes the rest (docs/container-contract.md, section 1)

Writing is all-or-nothing: everything goes to a staging folder, moved into place only once the whole input has
been read and checked, the manifest last. Reading trusts nothing: every chunk is checked against the manifest.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import scipy.sparse as sp

from .. import npy
from ..contract import IDS_FILE, MANIFEST, NORMALIZED_FORMAT
from ..errors import StepError
from ..io import sha256_file, sha256_text, write_json, write_npy
from . import sparse_chunks

FORMAT, VERSION = NORMALIZED_FORMAT


# ---- writing -------------------------------------------------------------------------------------------------


@dataclass
class NormalizedWriter:
    """Collects normalized rows into fixed-size float32 chunks (each written atomically) and their ids and input
    positions into ids.parquet (one row group per batch), under `directory` (a staging folder)."""

    directory: Path
    chunk_rows: int
    dim: int
    id_type: str  # "int64" | "string"
    sparse: bool = False  # CSR rows in, sparse chunks out (a chunk also ends once its values take chunk_bytes)
    chunk_bytes: int = 256 << 20
    chunks: list[dict] = field(default_factory=list)
    rows_written: int = 0

    def __post_init__(self) -> None:
        self._buffer = None if self.sparse else np.empty((self.chunk_rows, self.dim), dtype=np.float32)
        self._pieces: list[sp.csr_matrix] = []  # sparse: the rows buffered
        self._filled = 0
        self._ids_type = pa.int64() if self.id_type == "int64" else pa.string()
        self._schema = pa.schema([("id", self._ids_type), ("input_row", pa.int64())])
        self._ids = pq.ParquetWriter(self.directory / IDS_FILE, self._schema)

    def add(self, rows: np.ndarray, ids: np.ndarray, input_rows: np.ndarray) -> None:
        """Append rows, their ids and their positions in the input (which differ from their positions here once
        rows were dropped)."""
        if len(ids):
            self._ids.write_table(pa.table({"id": pa.array(ids, type=self._ids_type),
                                            "input_row": pa.array(input_rows, type=pa.int64())}, schema=self._schema))
        if self.sparse:
            self._add_sparse(rows)
            return
        taken = 0
        while taken < len(rows):
            n = min(len(rows) - taken, self.chunk_rows - self._filled)
            self._buffer[self._filled:self._filled + n] = rows[taken:taken + n]
            self._filled += n
            taken += n
            if self._filled == self.chunk_rows:
                self._flush()

    def close(self) -> None:
        """Write what is buffered and close ids.parquet (call it on failure too)."""
        try:
            self._flush()
        finally:
            self._ids.close()

    def _add_sparse(self, rows: sp.csr_matrix) -> None:
        taken = 0
        while taken < rows.shape[0]:
            n = min(rows.shape[0] - taken, self.chunk_rows - self._filled)
            self._pieces.append(rows[taken: taken + n])
            self._filled += n
            taken += n
            if self._filled == self.chunk_rows or sum(p.nnz for p in self._pieces) * 8 >= self.chunk_bytes:
                self._flush()

    def _flush(self) -> None:
        if not self._filled:
            return
        extra = {}
        if self.sparse:
            name = f"chunks/chunk-{len(self.chunks):06d}{sparse_chunks.EXTENSION}"
            rows = sp.vstack(self._pieces, format="csr")
            sparse_chunks.write_chunk(self.directory / name, rows)
            self._pieces, extra = [], {"nnz": int(rows.nnz)}
        else:
            name = f"chunks/chunk-{len(self.chunks):06d}.npy"
            write_npy(self.directory / name, self._buffer[:self._filled])
        start = self.rows_written
        self.rows_written += self._filled
        self.chunks.append({"file": name, "start": start, "stop": self.rows_written, **extra,
                            "sha256": sha256_file(self.directory / name)})
        self._filled = 0

    def manifest(self, ids: dict, input_: dict, **counts) -> dict:
        """The manifest of what was written: `ids` (source, type), `input_` (where the rows came from, its
        fingerprint), counts (zero_rows, dropped_rows, ...). Its fingerprint is what Similarity computed on."""
        ids_hash = sha256_file(self.directory / IDS_FILE)
        return {
            "format": FORMAT, "version": VERSION,
            "rows": self.rows_written, "dim": self.dim, "dtype": "float32", "chunk_rows": self.chunk_rows,
            **({"layout": "sparse", "chunk_format": sparse_chunks.FORMAT, "chunk_version": sparse_chunks.VERSION,
                "nnz": sum(c["nnz"] for c in self.chunks)} if self.sparse else {}),
            "chunks": self.chunks,
            "ids": {"file": IDS_FILE, **ids, "sha256": ids_hash},
            **counts,
            "input": input_,
            "fingerprint": fingerprint_of([c["sha256"] for c in self.chunks], ids_hash),
        }


def publish(staging: Path, output_dir: Path, manifest: dict) -> None:
    """Move the finished result into place: old manifest out first, the new one in last."""
    write_json(staging / MANIFEST, manifest)
    (output_dir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(output_dir / "chunks", ignore_errors=True)
    os.replace(staging / "chunks", output_dir / "chunks")
    os.replace(staging / IDS_FILE, output_dir / IDS_FILE)
    os.replace(staging / MANIFEST, output_dir / MANIFEST)
    staging.rmdir()


# ---- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalized:
    root: Path
    manifest: dict
    chunks: list  # memory-mapped, read-only float32 arrays; CSR float32 matrices for a sparse layout; [] when
    # opened for the manifest and ids only (load_normalized's open_chunks)

    @property
    def sparse(self) -> bool:
        return self.manifest.get("layout") == "sparse"

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def max_neighbors(self) -> int:
        """The most neighbours any row can have: every other row with a direction (a row is never its own
        neighbour, an all-zero row nobody's). At least 1: an artifact keeps one column even if all are padding."""
        return max(1, self.rows - int(self.manifest.get("zero_rows", 0)) - 1)

    def ids_path(self) -> Path:
        return self.root / self.manifest["ids"]["file"]


def read_manifest(root: Path) -> dict:
    """manifest.json of a normalized folder; StepError if it is missing or not one."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise StepError(f"{path}: missing; the Preprocess output is incomplete (rerun the Preprocess step)")
    try:
        manifest = json.loads(path.read_text())
        int(manifest["dim"]), int(manifest["rows"]), str(manifest["ids"]["file"]), str(manifest["ids"]["sha256"])  # noqa: B018
        for entry in manifest["chunks"]:  # presence and types: a reader below may trust them
            str(entry["file"]), int(entry["start"]), int(entry["stop"]), str(entry["sha256"])  # noqa: B018
        return manifest
    except (ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{path}: not a valid Preprocess manifest ({exc}); rerun the Preprocess step")


def load_normalized(root: Path, verify: bool = True, open_chunks: bool = True) -> Normalized:
    """Open the chunks listed in manifest.json; a missing, reshaped or altered chunk is an error naming it.
    `open_chunks=False` (Merge, the queries' Preprocess: they need the manifest and the ids, not the vectors)
    checks each chunk's presence (and a dense one's header) without opening it: a sparse chunk would otherwise
    be read whole into memory.

    The fingerprint (what checkpoints and shards are keyed by) is derived here from the chunks' and ids'
    hashes, which `verify` checks against the bytes on disk, and must equal the manifest's: a manifest whose
    hashes were updated for edited data but whose fingerprint was left as it was would otherwise let a resume
    reuse checkpoints computed on the old data."""
    root = Path(root)
    manifest = read_manifest(root)
    dim = int(manifest["dim"])
    chunks = []
    expected_start = 0
    for entry in manifest["chunks"]:
        path = root / entry["file"]
        if not path.exists():
            raise StepError(f"{path}: chunk listed in {MANIFEST} is missing; rerun the Preprocess step")
        if verify and sha256_file(path) != entry["sha256"]:
            raise StepError(f"{path}: checksum differs from {MANIFEST} (corrupt or from another run); "
                            "rerun the Preprocess step")
        rows = entry["stop"] - entry["start"]
        if manifest.get("layout") == "sparse":
            chunk = sparse_chunks.read_chunk(path, rows, dim, int(entry.get("nnz", -1))) if open_chunks else None
        else:
            _check_chunk_header(path, rows, dim)
            chunk = np.load(path, mmap_mode="r") if open_chunks else None
        if entry["start"] != expected_start:
            raise StepError(f"{path}: {MANIFEST} places it at row {entry['start']}, after row {expected_start}; "
                            "rerun the Preprocess step")
        expected_start = entry["stop"]
        if open_chunks:
            chunks.append(chunk)
    if expected_start != manifest["rows"]:
        raise StepError(f"{root / MANIFEST}: chunks cover {expected_start} rows, the manifest says "
                        f"{manifest['rows']}; rerun the Preprocess step")
    ids_path = root / manifest["ids"]["file"]
    if verify and sha256_file(ids_path) != manifest["ids"]["sha256"]:
        raise StepError(f"{ids_path}: checksum differs from {MANIFEST} (corrupt or from another run); "
                        "rerun the Preprocess step")
    derived = fingerprint_of([c["sha256"] for c in manifest["chunks"]], manifest["ids"]["sha256"])
    if manifest.get("fingerprint") != derived:
        raise StepError(f"{root / MANIFEST}: fingerprint {str(manifest.get('fingerprint'))[:12]} is not that of the "
                        f"chunks and ids it lists ({derived[:12]}): the manifest was edited or mixed from two runs; "
                        "rerun the Preprocess step")
    return Normalized(root, manifest, chunks)


def fingerprint_of(chunk_hashes: list[str], ids_hash: str) -> str:
    """What Similarity computed on: the chunks' and the ids' SHA-256, in order."""
    return sha256_text(*chunk_hashes, ids_hash)


def _check_chunk_header(path: Path, rows: int, dim: int) -> None:
    """The chunk's .npy header, read before mapping it: a header that lies would make np.load map or read past
    the file (or fail with a bare ValueError)."""
    try:
        header = npy.read_header(path)
    except (ValueError, OSError, EOFError) as exc:
        raise StepError(f"{path}: not a readable .npy chunk ({exc}); rerun the Preprocess step") from None
    expected = header.offset + rows * dim * 4
    if header.shape != (rows, dim) or header.dtype != np.float32 or header.fortran_order \
            or path.stat().st_size != expected:
        raise StepError(f"{path}: holds {header.dtype}{header.shape} in {path.stat().st_size} bytes, {MANIFEST} says "
                        f"float32({rows}, {dim}) in {expected} bytes; rerun the Preprocess step")


def read_ids(normalized: Normalized) -> pa.Array:
    """The row ids, checked against the manifest."""
    return read_id_columns(normalized).column("id").combine_chunks()


def read_id_columns(normalized: Normalized) -> pa.Table:
    """`id` and `input_row` of every row, in row order, checked against the manifest."""
    path = normalized.ids_path()
    digest = normalized.manifest["ids"].get("sha256")
    if digest and sha256_file(path) != digest:
        raise StepError(f"{path}: checksum differs from the Preprocess manifest; rerun the Preprocess step")
    try:
        table = pq.read_table(path, columns=["id", "input_row"])
    except (KeyError, ValueError, pa.ArrowException) as exc:
        raise StepError(f"{path}: not an ids file of {FORMAT} version {VERSION} ({exc}); rerun the Preprocess step")
    if table.num_rows != normalized.rows:
        raise StepError(f"{path}: {table.num_rows} ids for {normalized.rows} rows; rerun the Preprocess step")
    return table
