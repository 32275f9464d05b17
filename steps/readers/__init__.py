"""Streaming matrix readers: a directory of .npy, .parquet or .csv/.tsv files -> (ids, float64 rows) batches.

One module per input format (npy.py, npz.py: scipy.sparse, parquet.py, csv.py; columns.py for what parquet and CSV share), behind
this dispatcher: each has FORMAT, read_schema(file), plan(schemas, id_column, vector_column) and
iter_rows(file, plan, batch_rows).

The input is the Preprocess `matrix` channel: one file, or many under a prefix. Decisions, in one place:

- Files are read in key order: relative POSIX paths, sorted, recursing into subfolders. Symbolic links are
  followed (a linked folder is read like a folder); a dangling link, a link to something already read (it
  would be read twice) and anything that is not a regular file are errors, not skipped.
- Skipped silently: any path with a part starting with "." (hidden files, `.DS_Store`, Spark's `.crc`
  sidecars) or "_" (Hadoop/Spark markers and scratch: `_SUCCESS`, `_committed_*`, `_temporary/`).
  Anything else with an unknown extension is an error: silently skipping e.g. `part-0.csv.xz` would lose rows.
  The format is the extension's (steps/contract.py INPUT_EXTENSIONS): CSV and TSV may be .gz, .bz2 or .zst
  compressed; a text file's delimiter is input.delimiter, else a tab for .tsv, else a comma.
- All files of one prefix share one format, one dimension, and (parquet/csv) one column set; columns are
  matched by name, so the column order may differ between files. A file with a header/schema but no rows is
  fine (Spark writes empty partitions); a zero-byte file is an error.
- Parquet vectors: a list, large_list or fixed_size_list column of numbers holds each row's vector (the one
  input.vector_column names, or the only such column); the id column is chosen as below, other columns are
  ignored (and listed). Every vector has the same length; a null vector, or a null in one, is a missing value.
- Columns (parquet/csv): numeric feature columns plus at most one id column: `--id-column`, or else the only
  non-numeric column (string ids work without setup), or else ids are global row numbers (int64, counted
  across files in key order). Numeric ids therefore need `--id-column`. CSV ids are always strings (CSV has
  no types; "00123" must stay "00123"); parquet integer ids stay int64.
- Rows in messages are 0-based data rows of the file (the header is not a row); CSV messages add the
  1-based line number (row + 2) an editor shows.
- Missing values (parquet nulls, empty CSV fields) come out as NaN, so the caller's NaN policy covers them.

Entry points: `plan_matrix(root, id_column)` inspects every file's schema (cheap, no data read) and checks
they agree; `iter_matrix(plan, batch_rows)` then yields `MatrixBatch`es of at most `batch_rows` rows.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..contract import INPUT_TYPES, input_delimiter, input_format
from ..errors import StepError
from . import csv, npy, npz, parquet
from .base import FileSchema, InputFile, MatrixBatch, MatrixPlan, batch_rows_for, describe_row

READERS = {module.FORMAT: module for module in (npy, npz, parquet, csv)}

__all__ = ["FileSchema", "InputFile", "MatrixBatch", "MatrixPlan", "batch_rows_for", "describe_row",
           "iter_matrix", "list_input_files", "plan_matrix", "read_schema"]


def list_input_files(root: Path, delimiter: str | None = None) -> list[InputFile]:
    root = Path(root)
    if not root.is_dir():
        raise StepError(
            f"input channel {root} does not exist or is not a directory; "
            "map the InputData location to the processing input 'matrix'"
        )
    found = [_input_file(root, p, delimiter) for p in _walk(root)]
    if not found:
        raise StepError(
            f"input {root} holds no data files; point InputData at a .npy, .parquet or .csv file or a prefix of them"
        )
    found.sort(key=lambda f: f.key)
    _check_one_format(found)
    return found


def _walk(root: Path) -> list[Path]:
    """Every file under `root`, following symbolic links (a linked folder is read like a folder), each file
    read once: a link that leads nowhere, somewhere already read, or to something that is not a regular file
    is an error, never skipped in silence."""
    top = root.stat()
    seen: dict[tuple[int, int], str] = {(top.st_dev, top.st_ino): ""}  # (device, inode) -> where first met
    files = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            key = entry.relative_to(root).as_posix()
            if _is_skipped(entry.relative_to(root)):
                continue
            try:
                info = entry.stat()  # follows links
            except FileNotFoundError:
                raise StepError(f"{key}: a symbolic link to {os.readlink(entry)!r}, which does not exist; restore "
                                "its target or remove the link") from None
            except OSError as exc:  # a link loop (ELOOP), a permission
                raise StepError(f"{key}: cannot be read ({exc.strerror}); fix or remove it") from None
            identity = (info.st_dev, info.st_ino)
            if identity in seen:
                raise StepError(f"{key}: the same {'folder' if stat.S_ISDIR(info.st_mode) else 'file'} as "
                                f"{seen[identity] or 'the input itself'} (through a symbolic link), so its rows would "
                                "be read twice; remove the link")
            seen[identity] = key
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry)
            elif stat.S_ISREG(info.st_mode):
                files.append(entry)
            else:
                raise StepError(f"{key}: not a regular file (a FIFO, socket or device); the input may hold only "
                                ".npy, .parquet or .csv files: remove it")
    return files


def _is_skipped(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _input_file(root: Path, path: Path, delimiter: str | None) -> InputFile:
    key = path.relative_to(root).as_posix()
    fmt = input_format(path.name)
    if fmt is None:
        raise StepError(
            f"{key}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"the input may hold only {INPUT_TYPES} (remove or move this one)"
        )
    size = path.stat().st_size
    if size == 0:
        raise StepError(f"{key}: file is empty (0 bytes); remove it or re-export the data")
    return InputFile(path=path, key=key, format=fmt, bytes=size, delimiter=input_delimiter(path.name, delimiter))


def _check_one_format(files: Sequence[InputFile]) -> None:
    first = files[0]
    for other in files[1:]:
        if other.format != first.format:
            raise StepError(
                f"mixed input formats: {first.key} is {first.format} but {other.key} is {other.format}; "
                "put files of one format under the input prefix"
            )
        if other.delimiter != first.delimiter:
            raise StepError(
                f"mixed delimiters: {first.key} is read as {first.delimiter!r}-separated but {other.key} as "
                f"{other.delimiter!r}-separated; put files of one kind under the input prefix, or set "
                "input.delimiter if they really share one"
            )


def plan_matrix(root: Path, id_column: str | None = None, vector_column: str | None = None,
                delimiter: str | None = None) -> MatrixPlan:
    files = list_input_files(root, delimiter)
    schemas = [read_schema(f) for f in files]
    return READERS[files[0].format].plan(schemas, id_column, vector_column)


def read_schema(file: InputFile) -> FileSchema:
    return READERS[file.format].read_schema(file)


def iter_matrix(plan: MatrixPlan, batch_rows: int) -> Iterator[MatrixBatch]:
    """Yield the whole matrix in input order, at most `batch_rows` rows at a time."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    reader = READERS[plan.format].iter_rows
    global_row = 0
    for file in plan.files:
        for file_row, ids, values in reader(file, plan, batch_rows):
            rows = values.shape[0]  # values: float64 rows, or a CSR matrix (sparse input)
            if ids is None:  # row numbers, counted across files: the row's place in the whole input
                ids = np.arange(global_row, global_row + rows, dtype=np.int64)
            global_row += rows
            yield MatrixBatch(file.key, file_row, ids, values)
