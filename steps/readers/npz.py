"""Sparse .npz input, as scipy.sparse.save_npz writes it: a CSR, CSC or COO matrix; ids are row numbers.

Each file is read whole (the arrays of a .npz are read, not mapped: split a matrix larger than memory into
several files) and checked before scipy sees it: index arrays of the right lengths, every index in range
(the first bad one named by its file and row). Then, as DESIGN's rules say for any input:

- duplicate entries of a row (the same column more than once, as COO allows) are summed, as scipy's own
  conversions do; unsorted indices are sorted;
- explicit zeros are dropped (they carry nothing); a row with no entries left is an all-zero row;
- integer and float16 data are converted (to float64 here, float32 after normalizing), as for dense input;
- NaN/inf values follow input.non_finite (the message names file, row and column).

Batches are CSR matrices (float64) of at most `batch_rows` rows.
"""
from __future__ import annotations

import zipfile
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import StepError, brief
from .base import FileSchema, InputFile, MatrixPlan, common_dtype, same_width

FORMAT = "npz"
LAYOUTS = {"csr": ("indices", "indptr"), "csc": ("indices", "indptr"), "coo": ("row", "col")}
FIX = "write it with scipy.sparse.save_npz(path, matrix)"


def read_schema(file: InputFile) -> FileSchema:
    layout, shape, dtype = _header(file)
    return FileSchema(file, (), (), shape[1], dtype.name)


def _open(file: InputFile):
    try:
        opened = np.load(file.path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise StepError(f"{file.key}: not a readable .npz file ({brief(exc)}); {FIX}") from None
    if not isinstance(opened, np.lib.npyio.NpzFile):
        raise StepError(f"{file.key}: a .npy array named .npz, not a scipy.sparse matrix; rename it to .npy, or {FIX}")
    return opened


def _header(file: InputFile) -> tuple[str, tuple[int, int], np.dtype]:
    with _open(file) as z:
        if "format" not in z.files:
            raise StepError(
                f"{file.key}: a .npz of dense arrays ({', '.join(sorted(z.files)) or 'none'}), not a scipy.sparse "
                "matrix; save a dense matrix as .npy (numpy.save), a sparse one with scipy.sparse.save_npz"
            )
        try:
            layout = z["format"].item()
            layout = layout.decode() if isinstance(layout, bytes) else str(layout)
            shape = tuple(int(n) for n in z["shape"])
        except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:
            raise StepError(f"{file.key}: not a readable scipy.sparse .npz ({brief(exc)}); {FIX}") from None
        if layout not in LAYOUTS:
            raise StepError(f"{file.key}: a scipy.sparse {layout!r} matrix; save it as CSR, CSC or COO "
                            "(scipy.sparse.save_npz(path, matrix.tocsr()))")
        missing = [name for name in ("data", *LAYOUTS[layout]) if name not in z.files]
        if missing:
            raise StepError(f"{file.key}: a {layout} matrix without {', '.join(missing)}; {FIX}")
        dtype = _member_dtype(file, z, "data")
    if len(shape) != 2 or min(shape) < 0:
        raise StepError(f"{file.key}: shape {shape}, but a 2-D (rows, features) matrix is required; {FIX}")
    if shape[1] == 0:
        raise StepError(f"{file.key}: matrix has shape {shape}: zero feature columns; save a matrix with at least "
                        "one column")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise StepError(f"{file.key}: data of dtype {dtype} is not numeric; save the matrix with float or integer "
                        "values")
    return layout, shape, dtype


def _member_dtype(file: InputFile, z, name: str) -> np.dtype:
    """A member's dtype from its .npy header, without reading its values."""
    try:
        return _header_dtype(z, name)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise StepError(f"{file.key}: a damaged .npz ({name}: {brief(exc)}); copy it again, or {FIX}") from None


def _header_dtype(z, name: str) -> np.dtype:
    with z.zip.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read(member)
    return dtype


def plan(schemas: Sequence[FileSchema], id_column: str | None, vector_column: str | None = None) -> MatrixPlan:
    if id_column or vector_column:
        option = "id_column" if id_column else "vector_column"
        raise StepError(
            f"{option.replace('_', ' ')} {id_column or vector_column!r} was named (input.{option}), but the input is "
            f"sparse .npz, which has no named columns; remove input.{option} (ids are then row numbers)"
        )
    first = same_width(schemas)
    return MatrixPlan(tuple(s.file for s in schemas), FORMAT, first.dim, (), None, "int64", common_dtype(schemas))


def iter_rows(file: InputFile, plan: MatrixPlan, batch_rows: int):
    matrix = read_matrix(file)
    for start in range(0, matrix.shape[0], batch_rows):
        yield start, None, matrix[start: start + batch_rows]


def read_matrix(file: InputFile) -> sp.csr_matrix:
    """The file's matrix as canonical CSR float64: indices checked, sorted, duplicates summed, zeros dropped."""
    layout, shape, _ = _header(file)
    rows, cols = shape
    with _open(file) as z:
        try:
            arrays = {name: z[name] for name in ("data", *LAYOUTS[layout])}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise StepError(f"{file.key}: a damaged .npz ({brief(exc)}); copy it again, or {FIX}") from None
    data = arrays["data"]
    if data.ndim != 1:
        raise StepError(f"{file.key}: data has shape {data.shape}, not one value per entry; {FIX}")
    for name in LAYOUTS[layout]:
        if arrays[name].ndim != 1 or not np.issubdtype(arrays[name].dtype, np.integer):
            raise StepError(f"{file.key}: {name} is {arrays[name].dtype}{arrays[name].shape}, not a 1-D array of "
                            f"integers; {FIX}")
    values = data.astype(np.float64)
    if layout == "coo":
        matrix = _coo(file, arrays["row"], arrays["col"], values, rows, cols)
    else:
        matrix = _compressed(file, layout, arrays["indices"], arrays["indptr"], values, rows, cols)
    matrix.sum_duplicates()  # sorts each row's indices, sums repeated ones
    matrix.eliminate_zeros()
    return matrix


def _coo(file: InputFile, row: np.ndarray, col: np.ndarray, values: np.ndarray, rows: int, cols: int) -> sp.csr_matrix:
    if not len(row) == len(col) == len(values):
        raise StepError(f"{file.key}: row, col and data hold {len(row)}, {len(col)} and {len(values)} entries; a "
                        f"COO matrix has one of each per entry: {FIX}")
    bad = np.flatnonzero((row < 0) | (row >= rows))
    if len(bad):
        raise StepError(f"{file.key} entry {bad[0]}: row index {row[bad[0]]} is out of range (the matrix has {rows} "
                        f"rows); {FIX} from a valid matrix")
    bad = np.flatnonzero((col < 0) | (col >= cols))
    if len(bad):
        raise StepError(f"{file.key} row {row[bad[0]]}: column index {col[bad[0]]} is out of range (the matrix has "
                        f"{cols} columns); {FIX} from a valid matrix")
    return sp.coo_matrix((values, (row.astype(np.int64), col.astype(np.int64))), shape=(rows, cols)).tocsr()


def _compressed(file: InputFile, layout: str, indices: np.ndarray, indptr: np.ndarray, values: np.ndarray,
                rows: int, cols: int) -> sp.csr_matrix:
    """CSR (rows compressed) or CSC (columns compressed), checked, as CSR."""
    major, minor = (rows, cols) if layout == "csr" else (cols, rows)
    major_name, minor_name = ("row", "column") if layout == "csr" else ("column", "row")
    if len(indptr) != major + 1:
        raise StepError(f"{file.key}: indptr has {len(indptr)} entries, but a {layout} matrix of {major} "
                        f"{major_name}s has {major + 1}; {FIX}")
    if len(indices) != len(values):
        raise StepError(f"{file.key}: indices and data hold {len(indices)} and {len(values)} entries; {FIX}")
    steps = np.diff(indptr.astype(np.int64))
    back = np.flatnonzero(steps < 0)
    if indptr[0] != 0 or len(back) or indptr[-1] != len(indices):
        where = f" {major_name} {back[0]}" if len(back) else ""
        raise StepError(f"{file.key}{where}: indptr is not a valid {layout} index (it must start at 0, never "
                        f"decrease and end at the {len(indices)} entries); {FIX}")
    bad = np.flatnonzero((indices < 0) | (indices >= minor))
    if len(bad):
        at = int(np.searchsorted(indptr, bad[0], side="right") - 1)  # the row (csr) or column (csc) holding it
        raise StepError(f"{file.key} {major_name} {at}: {minor_name} index {indices[bad[0]]} is out of range (the "
                        f"matrix has {minor} {minor_name}s); {FIX} from a valid matrix")
    build = sp.csr_matrix if layout == "csr" else sp.csc_matrix
    return build((values, indices.astype(np.int64), indptr.astype(np.int64)), shape=(rows, cols)).tocsr()
