"""A sparse normalized chunk (Preprocess -> Similarity, for sparse input): rows [start, stop) of the
L2-normalized matrix in canonical CSR form, one uncompressed .npz (numpy.savez) of

    format   the string "allpairs.sparse-chunk"       version  int (VERSION)
    shape    int64 (rows, dim)
    indptr   int64 (rows + 1): starts at 0, never decreases, ends at nnz
    indices  int32 (nnz): each value's column, strictly increasing within a row (sorted, no duplicates)
    data     float32 (nnz): the values, finite and never zero

The manifest (normalized.py) lists each chunk with its rows, nnz and SHA-256; the reader checks all of the
above, so a chunk whose arrays disagree is refused by name, never half-used. A row with no values is an
all-zero row (no neighbours, nobody's neighbour: DESIGN's rule for zero rows). Written atomically (temp + rename).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import StepError, brief
from ..io import atomic_path

FORMAT, VERSION = "allpairs.sparse-chunk", 1
EXTENSION = ".npz"


def write_chunk(dest: Path, rows: sp.csr_matrix) -> None:
    """Write canonical CSR float32 rows (sorted indices, no duplicates, no zeros) as one chunk file."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(FORMAT), version=np.array(VERSION, np.int64),
                     shape=np.array(rows.shape, np.int64), indptr=rows.indptr.astype(np.int64),
                     indices=rows.indices.astype(np.int32), data=rows.data.astype(np.float32))


def read_chunk(path: Path, rows: int, dim: int, nnz: int) -> sp.csr_matrix:
    """The chunk at `path`, checked to hold `rows` x `dim` with `nnz` values in canonical form."""
    fix = "rerun the Preprocess step"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in ("format", "version", "shape", "indptr", "indices", "data")}
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise StepError(f"{path}: not a readable {FORMAT} chunk ({brief(exc)}); {fix}") from None
    if str(arrays["format"]) != FORMAT or int(arrays["version"]) != VERSION:
        raise StepError(f"{path}: a {arrays['format']} version {arrays['version']} file, not {FORMAT} version "
                        f"{VERSION}; {fix}")
    indptr, indices, data = arrays["indptr"], arrays["indices"], arrays["data"]
    shape = tuple(int(n) for n in arrays["shape"])
    problem = None
    if shape != (rows, dim) or indptr.dtype != np.int64 or indices.dtype != np.int32 or data.dtype != np.float32:
        problem = f"holds {data.dtype}{shape}, the manifest says float32({rows}, {dim})"
    elif len(indptr) != rows + 1 or indptr[0] != 0 or indptr[-1] != nnz or len(indices) != nnz or len(data) != nnz:
        problem = f"its index arrays do not describe {nnz} values in {rows} rows"
    elif (np.diff(indptr) < 0).any() or (nnz and (indices.min() < 0 or indices.max() >= dim)):
        problem = "its index arrays are out of range"
    elif not np.isfinite(data).all() or (data == 0).any():
        problem = "it holds zero or non-finite values"
    else:
        inside = np.diff(indices.astype(np.int64)) > 0
        starts = indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < nnz)]  # a row's first value follows another row's
        inside[starts - 1] = True
        if not inside.all():
            problem = "a row's columns are not strictly increasing"
    if problem:
        raise StepError(f"{path}: not a valid {FORMAT} chunk: {problem}; {fix}")
    return sp.csr_matrix((data, indices, indptr), shape=shape)
