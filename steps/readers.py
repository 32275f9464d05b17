"""Streaming matrix readers: a directory of .npy, .parquet or .csv files -> (ids, float64 rows) batches.

The input is the Preprocess `matrix` channel: one file, or many under a prefix. Decisions, in one place:

- Files are read in key order: relative POSIX paths, sorted, recursing into subfolders.
- Skipped silently: any path with a part starting with "." (hidden files, `.DS_Store`, Spark's `.crc`
  sidecars) or "_" (Hadoop/Spark markers and scratch: `_SUCCESS`, `_committed_*`, `_temporary/`).
  Anything else with an unknown extension is an error: silently skipping e.g. `part-0.csv.gz` would lose rows.
- All files of one prefix share one format, one dimension, and (parquet/csv) one column set; columns are
  matched by name, so the column order may differ between files. A file with a header/schema but no rows is
  fine (Spark writes empty partitions); a zero-byte file is an error.
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

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import npy
from .errors import StepError

FORMATS = {".npy": "npy", ".parquet": "parquet", ".csv": "csv"}
STRAY_TEXT_SHARE = 0.9  # a sampled column this numeric is a feature with bad cells, not an id column
# Numeric columns that hold ids or a saved index, not features: `id`, `user_id`, pandas' `Unnamed: 0`, ...
_ID_LIKE = re.compile(r"(?i)id|.*[_ \-]id|index|key")
_SAVED_INDEX = re.compile(r"(?i)|unnamed: ?\d+")
CSV_BLOCK_BYTES = 1 << 22  # pyarrow parses CSV in blocks of this size; bounds memory and the type-inference sample
BATCH_BUDGET_BYTES = 64 << 20  # one float64 batch stays under this, whatever the row width


@dataclass(frozen=True)
class InputFile:
    path: Path
    key: str  # relative POSIX path inside the channel: what messages and the manifest name
    format: str
    bytes: int


@dataclass(frozen=True)
class FileSchema:
    """What one file holds, read from its header/schema only."""

    file: InputFile
    columns: tuple[str, ...]  # () for npy
    non_numeric: tuple[str, ...]  # columns whose type is not numeric (id candidates)
    dim: int  # npy: width; parquet/csv: number of columns
    source_dtype: str | None  # numpy name of the file's numeric type(s), e.g. "float32"; None: no typed values
    typed: tuple[str, ...] = ()  # columns with a known numeric type (a CSV column with no values has none)


@dataclass(frozen=True)
class MatrixPlan:
    """Every input file, checked to agree, and how to turn its rows into (ids, features)."""

    files: tuple[InputFile, ...]
    format: str
    dim: int
    feature_columns: tuple[str, ...]  # () for npy
    id_column: str | None  # None: ids are global row numbers
    id_type: str  # "string" | "int64"
    source_dtype: str

    @property
    def id_source(self) -> str:
        return f"column {self.id_column}" if self.id_column else "row number"


@dataclass(frozen=True)
class MatrixBatch:
    key: str  # the file the rows come from
    file_row: int  # 0-based row, within that file, of values[0]
    ids: np.ndarray  # int64, or object array of str
    values: np.ndarray  # float64, C-contiguous, (rows, dim); missing values are NaN

    def where(self, row_in_batch: int) -> str:
        """'<file> row R' (plus 'line L' for csv) for messages."""
        return describe_row(self.key, self.file_row + row_in_batch)


def describe_row(key: str, row: int) -> str:
    line = f" (line {row + 2})" if key.endswith(".csv") else ""  # header is line 1
    return f"{key} row {row}{line}"


def batch_rows_for(dim: int, limit: int) -> int:
    """Rows per batch: at most `limit`, and a float64 batch under BATCH_BUDGET_BYTES."""
    return max(1, min(limit, BATCH_BUDGET_BYTES // (8 * max(dim, 1))))


# ---------------------------------------------------------------------------------------------- listing


def list_input_files(root: Path) -> list[InputFile]:
    root = Path(root)
    if not root.is_dir():
        raise StepError(
            f"input channel {root} does not exist or is not a directory; "
            "map the InputData location to the processing input 'matrix'"
        )
    found = [_input_file(root, p) for p in root.rglob("*") if p.is_file() and not _is_skipped(p.relative_to(root))]
    if not found:
        raise StepError(
            f"input {root} holds no data files; point InputData at a .npy, .parquet or .csv file or a prefix of them"
        )
    found.sort(key=lambda f: f.key)
    _check_one_format(found)
    return found


def _is_skipped(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _input_file(root: Path, path: Path) -> InputFile:
    key = path.relative_to(root).as_posix()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise StepError(
            f"{key}: unsupported file type {path.suffix or '(no extension)'!r}; "
            "the input may hold only .npy, .parquet or .csv files (remove or move this one)"
        )
    size = path.stat().st_size
    if size == 0:
        raise StepError(f"{key}: file is empty (0 bytes); remove it or re-export the data")
    return InputFile(path=path, key=key, format=fmt, bytes=size)


def _check_one_format(files: Sequence[InputFile]) -> None:
    first = files[0]
    for other in files[1:]:
        if other.format != first.format:
            raise StepError(
                f"mixed input formats: {first.key} is {first.format} but {other.key} is {other.format}; "
                "put files of one format under the input prefix"
            )


# ---------------------------------------------------------------------------------------------- schemas


def plan_matrix(root: Path, id_column: str | None = None) -> MatrixPlan:
    files = list_input_files(root)
    schemas = [read_schema(f) for f in files]
    if files[0].format == "npy":
        return _plan_npy(schemas, id_column)
    return _plan_columns(schemas, id_column)


def read_schema(file: InputFile) -> FileSchema:
    reader = {"npy": _npy_schema, "parquet": _parquet_schema, "csv": _csv_schema}[file.format]
    return reader(file)


def _is_numeric(arrow_type: pa.DataType) -> bool:
    # null: a column with no values yet (empty file, or all-missing first block); its NaNs are reported later
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type) \
        or pa.types.is_null(arrow_type)


def _numpy_name(arrow_types: Sequence[pa.DataType]) -> str | None:
    """Common numpy type of the typed columns; None when no column has a type yet (e.g. header-only CSV)."""
    numpy_types = [np.dtype(np.float64) if pa.types.is_decimal(t) else t.to_pandas_dtype()
                   for t in arrow_types if not pa.types.is_null(t)]
    return np.result_type(*numpy_types).name if numpy_types else None


def _common_dtype(schemas: Sequence[FileSchema]) -> str:
    known = [np.dtype(s.source_dtype) for s in schemas if s.source_dtype]
    return np.result_type(*known).name if known else "float64"


def _columns_schema(file: InputFile, schema: pa.Schema) -> FileSchema:
    names = tuple(schema.names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StepError(f"{file.key}: column name {duplicates[0]!r} appears more than once; give every column a unique name")
    numeric = [f.type for f in schema if _is_numeric(f.type)]
    non_numeric = tuple(f.name for f in schema if not _is_numeric(f.type))
    typed = tuple(f.name for f in schema if _is_numeric(f.type) and not pa.types.is_null(f.type))
    return FileSchema(file, names, non_numeric, len(names), _numpy_name(numeric), typed)


def _parquet_schema(file: InputFile) -> FileSchema:
    try:
        schema = pq.ParquetFile(file.path).schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise StepError(f"{file.key}: not a readable Parquet file ({exc}); re-export it or remove it from the input") from exc
    return _columns_schema(file, schema)


def _csv_schema(file: InputFile) -> FileSchema:
    # open_csv infers types from the first block only; that is the sample id detection works from.
    try:
        schema = _open_csv(file).schema
    except pa.ArrowInvalid as exc:
        raise _csv_error(file, exc) from exc
    _check_csv_header(file, schema.names)
    return _columns_schema(file, schema)


def _check_csv_header(file: InputFile, names: Sequence[str]) -> None:
    if all(_looks_numeric(n) for n in names):
        shown = ",".join(names[:4]) + (",..." if len(names) > 4 else "")
        raise StepError(
            f"{file.key} line 1: the first line ({shown}) looks like data, but a header row is required; "
            "add a line of column names (e.g. f0,f1,...) at the top"
        )


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _npy_schema(file: InputFile) -> FileSchema:
    shape, dtype, _ = _npy_header(file)
    if len(shape) != 2:
        raise StepError(
            f"{file.key}: array has shape {shape}, but a 2-D (rows, features) matrix is required; "
            "reshape it before saving (e.g. x.reshape(len(x), -1))"
        )
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise StepError(
            f"{file.key}: dtype {dtype} is not numeric; save the matrix as float32, float64 or an integer type"
        )
    if shape[1] == 0:
        raise StepError(f"{file.key}: matrix has shape {shape}: zero feature columns; save a matrix with at least one column")
    return FileSchema(file, (), (), shape[1], dtype.name)


def _npy_header(file: InputFile) -> tuple[tuple[int, ...], np.dtype, int]:
    """Read and check the .npy header ourselves: np.load would try to unpickle a file that is not .npy."""
    fix = "re-save it with numpy.save(path, matrix)"
    try:
        header = npy.read_header(file.path)
        shape, dtype, data_offset = header.shape, header.dtype, header.offset
    except (ValueError, OSError, EOFError) as exc:
        raise StepError(f"{file.key}: not a valid .npy file ({exc}); {fix}") from exc
    if dtype.hasobject:
        raise StepError(f"{file.key}: holds Python objects, not numbers; {fix} after converting it to a numeric dtype")
    expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if file.bytes < expected:
        raise StepError(
            f"{file.key}: truncated .npy file: header says shape {shape} {dtype} ({expected} bytes) "
            f"but the file has {file.bytes} bytes; copy it again or {fix}"
        )
    return shape, dtype, data_offset


def _plan_npy(schemas: Sequence[FileSchema], id_column: str | None) -> MatrixPlan:
    if id_column:
        raise StepError(
            f"id column {id_column!r} was named (input.id_column), but the input is .npy, which has no named columns; "
            "remove input.id_column (ids are then row numbers) or provide parquet/csv with that column"
        )
    first = schemas[0]
    for other in schemas[1:]:
        if other.dim != first.dim:
            raise StepError(
                f"{other.file.key} has {other.dim} columns but {first.file.key} has {first.dim}; "
                "every file of the input must have the same number of columns"
            )
    return MatrixPlan(tuple(s.file for s in schemas), "npy", first.dim, (), None, "int64", _common_dtype(schemas))


def _plan_columns(schemas: Sequence[FileSchema], id_column: str | None) -> MatrixPlan:
    first = schemas[0]
    for other in schemas[1:]:
        _check_same_columns(first, other)
    explicit_id = id_column
    id_column = id_column or _detect_id_column(schemas)
    if id_column is not None and id_column not in first.columns:
        raise StepError(
            f"{first.file.key}: id column {id_column!r} (input.id_column) not found; "
            f"columns present: {', '.join(first.columns)}; fix input.id_column in pipeline.yaml"
        )
    named = id_column is not None and id_column == explicit_id
    features = tuple(c for c in first.columns if c != id_column)
    if not features:
        separator = next((sep for sep in ";\t|" if id_column and sep in id_column), None)
        hint = (f"; the header looks {separator!r}-separated, but CSV input must be comma-separated"
                if separator else "")
        raise StepError(
            f"{first.file.key}: no feature columns (only the id column {id_column!r}); "
            f"the input needs at least one numeric column{hint}"
        )
    _check_id_like_features(first, features, named)
    if first.file.format == "parquet":  # csv types are only guessed from a sample: checked value by value instead
        for schema in schemas:
            _check_numeric_features(schema, features)
    id_type = _parquet_id_type(schemas, id_column) if first.file.format == "parquet" and id_column else (
        "string" if id_column else "int64")
    return MatrixPlan(tuple(s.file for s in schemas), first.file.format, len(features), features, id_column,
                      id_type, _common_dtype(schemas))


def _check_same_columns(first: FileSchema, other: FileSchema) -> None:
    if set(first.columns) == set(other.columns):
        return
    missing = [c for c in first.columns if c not in other.columns]
    extra = [c for c in other.columns if c not in first.columns]
    detail = "; ".join(part for part in (
        f"missing {', '.join(missing)}" if missing else "",
        f"extra {', '.join(extra)}" if extra else "") if part)
    raise StepError(
        f"{other.file.key} has different columns from {first.file.key} ({detail}); "
        "every file of the input must have the same columns"
    )


def _detect_id_column(schemas: Sequence[FileSchema]) -> str | None:
    candidates: dict[str, str] = {}  # column -> first file where it is non-numeric
    for schema in schemas:
        for name in schema.non_numeric:
            candidates.setdefault(name, schema.file.key)
    if len(candidates) <= 1:
        return next(iter(candidates), None)
    # A CSV column of numbers with one stray word is guessed as text: name that cell, not the ambiguity.
    for schema in schemas:
        if schema.file.format == "csv":
            _raise_on_stray_text(schema, [c for c in schema.non_numeric if c in candidates])
    listed = ", ".join(f"{name!r} ({key})" for name, key in candidates.items())
    raise StepError(
        f"more than one non-numeric column: {listed}; set input.id_column in pipeline.yaml to say which one holds the ids "
        "(the others must be numeric features)"
    )


def _raise_on_stray_text(schema: FileSchema, columns: Sequence[str]) -> None:
    """In the sampled block, a text column whose values are nearly all numbers is a feature with a bad cell."""
    try:
        block = _open_csv(schema.file, {c: pa.string() for c in columns}).read_next_batch()
    except (pa.ArrowInvalid, StopIteration):
        return
    for name in columns:
        values = block.column(name).to_pandas()
        present = values.notna()
        numbers = pd.to_numeric(values, errors="coerce").notna()
        if present.sum() and numbers.sum() >= STRAY_TEXT_SHARE * present.sum():
            row = int(np.flatnonzero(present & ~numbers)[0])
            raise StepError(
                f"{schema.file.key} row {row} (line {row + 2}) column {name!r}: {values.iloc[row]!r} is not a number; "
                "fix the value, or make this column the id column with input.id_column"
            )


def _check_id_like_features(first: FileSchema, features: Sequence[str], named: bool) -> None:
    """A numeric column named like an id (or pandas' saved index) would silently become a feature."""
    if named:
        return
    for name in features:
        if name in first.typed and _SAVED_INDEX.fullmatch(name):
            raise StepError(
                f"{first.file.key}: column {name!r} looks like a saved pandas index, so it would be used as a "
                "feature; write the file without it (to_csv(index=False)), or name it in input.id_column"
            )
        if name in first.typed and _ID_LIKE.fullmatch(name):
            raise StepError(
                f"{first.file.key}: column {name!r} is numeric and named like an id, so it would be "
                f"used as a feature; set input.id_column: {name} in pipeline.yaml (or drop or rename the column "
                "if it really is a feature)"
            )


def _check_numeric_features(schema: FileSchema, features: Sequence[str]) -> None:
    for name in features:
        if name in schema.non_numeric:
            arrow_type = pq.ParquetFile(schema.file.path).schema_arrow.field(name).type
            raise StepError(
                f"{schema.file.key}: column {name!r} is {arrow_type}, not numeric; store features as numbers "
                "(int or float), or make it the id column with input.id_column"
            )


def _parquet_id_type(schemas: Sequence[FileSchema], id_column: str) -> str:
    kinds = {}
    for schema in schemas:
        arrow_type = pq.ParquetFile(schema.file.path).schema_arrow.field(id_column).type
        if pa.types.is_nested(arrow_type):
            raise StepError(
                f"{schema.file.key}: column {id_column!r} is {arrow_type}, so it cannot be the id column (ids are "
                "strings or integers); if it holds the vectors, write one numeric column per feature instead"
            )
        kinds.setdefault("int64" if pa.types.is_integer(arrow_type) else "string", (schema.file.key, arrow_type))
    if len(kinds) > 1:
        (key_a, type_a), (key_b, type_b) = kinds.values()
        raise StepError(
            f"id column {id_column!r} is {type_a} in {key_a} but {type_b} in {key_b}; "
            "give the id column one type in every file"
        )
    return next(iter(kinds))


# ---------------------------------------------------------------------------------------------- reading


def iter_matrix(plan: MatrixPlan, batch_rows: int) -> Iterator[MatrixBatch]:
    """Yield the whole matrix in input order, at most `batch_rows` rows at a time."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    reader = {"npy": _iter_npy, "parquet": _iter_parquet, "csv": _iter_csv}[plan.format]
    global_row = 0
    for file in plan.files:
        for file_row, ids, values in reader(file, plan, batch_rows):
            if ids is None:  # row numbers, counted across files: the row's place in the whole input
                ids = np.arange(global_row, global_row + len(values), dtype=np.int64)
            global_row += len(values)
            yield MatrixBatch(file.key, file_row, ids, values)


def _iter_npy(file: InputFile, plan: MatrixPlan, batch_rows: int):
    header = npy.read_header(file.path)  # already validated by _npy_header
    # Plain reads, not a memory map: mapped pages would stay counted in memory until the whole file is done.
    for start in range(0, header.shape[0], batch_rows):
        values = npy.read_rows(file.path, start, start + batch_rows, header).astype(np.float64)
        yield start, None, values


def _iter_parquet(file: InputFile, plan: MatrixPlan, batch_rows: int):
    columns = list(plan.feature_columns) + ([plan.id_column] if plan.id_column else [])
    try:
        batches = pq.ParquetFile(file.path).iter_batches(batch_size=batch_rows, columns=columns)
        file_row = 0
        for batch in batches:
            yield file_row, _ids_of(batch, plan, file, file_row), _features_of(batch, plan, file, file_row)
            file_row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise StepError(f"{file.key}: cannot read Parquet data ({exc}); re-export the file") from exc


def _iter_csv(file: InputFile, plan: MatrixPlan, batch_rows: int):
    # Everything is read as text and converted here, so a bad value is reported with its row and column.
    text_types = {name: pa.string() for name in plan.feature_columns + ((plan.id_column,) if plan.id_column else ())}
    try:
        reader = _open_csv(file, text_types)
        _check_csv_header(file, reader.schema.names)
        file_row = 0
        for block in reader:
            for offset in range(0, block.num_rows, batch_rows):
                batch = block.slice(offset, batch_rows)
                yield file_row, _ids_of(batch, plan, file, file_row), _features_of(batch, plan, file, file_row)
                file_row += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise _csv_error(file, exc) from exc


def _open_csv(file: InputFile, column_types: dict | None = None) -> pacsv.CSVStreamingReader:
    convert = pacsv.ConvertOptions(
        column_types=column_types or {},
        strings_can_be_null=True,  # an empty field is a missing value (NaN), not the text ""
        null_values=[""],
        quoted_strings_can_be_null=False,
    )
    return pacsv.open_csv(file.path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
                          convert_options=convert)


def _csv_error(file: InputFile, exc: Exception) -> StepError:
    ragged = _find_ragged_line(file.path)
    if ragged is not None:
        line, expected, found = ragged
        return StepError(
            f"{file.key} line {line}: {found} fields, but the header has {expected}; "
            "fix that line (a missing or extra comma, or a value with a comma that needs quotes)"
        )
    return StepError(f"{file.key}: cannot parse CSV ({exc}); save it as UTF-8 CSV with a header row")


def _find_ragged_line(path: Path) -> tuple[int, int, int] | None:
    """(line, header fields, fields found) of the first row whose width differs from the header; error path only."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            return None
        for row in rows:
            if row and len(row) != len(header):  # blank lines are skipped, as pyarrow does
                return rows.line_num, len(header), len(row)
    return None


def _features_of(batch: pa.RecordBatch | pa.Table, plan: MatrixPlan, file: InputFile, file_row: int) -> np.ndarray:
    values = np.empty((batch.num_rows, plan.dim), dtype=np.float64)
    for j, name in enumerate(plan.feature_columns):
        column = _as_float64(batch.column(name), file, file_row, name)
        values[:, j] = column.to_numpy(zero_copy_only=False)  # nulls become NaN
    return values


def _as_float64(column: pa.Array | pa.ChunkedArray, file: InputFile, file_row: int, name: str) -> pa.Array:
    if not pa.types.is_string(column.type):
        return pc.cast(column, pa.float64())
    try:
        return pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        column = pc.utf8_trim_whitespace(column)  # " 2.5" is a number to a human; retry only when needed
    try:
        return pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        bad = _first_uncastable(column, pa.float64())
        raise StepError(
            f"{describe_row(file.key, file_row + bad)} column {name!r}: {column[bad].as_py()!r} is not a number; "
            "fix the value, or make this column the id column with input.id_column"
        ) from None


def _first_uncastable(column: pa.Array | pa.ChunkedArray, target: pa.DataType) -> int:
    """Index of the first value that fails the cast: bisect on prefixes (error path only)."""
    lo, hi = 0, len(column)  # invariant: prefix [0, lo) casts; [0, hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(column.slice(0, mid), target)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def _ids_of(batch: pa.RecordBatch | pa.Table, plan: MatrixPlan, file: InputFile, file_row: int) -> np.ndarray | None:
    if plan.id_column is None:
        return None
    column = batch.column(plan.id_column)
    if column.null_count:
        bad = _first_null(column)
        raise StepError(
            f"{describe_row(file.key, file_row + bad)} column {plan.id_column!r}: the id is missing; "
            "give every row an id"
        )
    if plan.id_type == "int64":
        try:
            return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid as exc:
            raise StepError(
                f"{file.key}: id column {plan.id_column!r} does not fit int64 ({exc}); store the ids as strings"
            ) from None
    return pc.cast(column, pa.string()).to_numpy(zero_copy_only=False)


def _first_null(column: pa.Array | pa.ChunkedArray) -> int:
    return int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])

