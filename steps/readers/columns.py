"""What parquet and CSV share: named columns, one of them perhaps the ids, the others numeric features.

A format module passes in what only it can know: `check_features` (parquet's real types), `explain_text_columns`
(CSV's sampled types: a number column with a stray word is guessed as text) and `id_type`.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StepError
from .base import FileSchema, InputFile, MatrixPlan, common_dtype, describe_row

# Numeric columns that hold ids or a saved index, not features: `id`, `user_id`, pandas' `Unnamed: 0`, ...
_ID_LIKE = re.compile(r"(?i)id|.*[_ \-]id|index|key")
_SAVED_INDEX = re.compile(r"(?i)|unnamed: ?\d+")


def is_numeric(arrow_type: pa.DataType) -> bool:
    # null: a column with no values yet (empty file, or all-missing first block); its NaNs are reported later
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type) \
        or pa.types.is_null(arrow_type)


def numpy_name(arrow_types: Sequence[pa.DataType]) -> str | None:
    """Common numpy type of the typed columns; None when no column has a type yet (e.g. header-only CSV)."""
    numpy_types = [np.dtype(np.float64) if pa.types.is_decimal(t) else t.to_pandas_dtype()
                   for t in arrow_types if not pa.types.is_null(t)]
    return np.result_type(*numpy_types).name if numpy_types else None


def columns_schema(file: InputFile, schema: pa.Schema) -> FileSchema:
    names = tuple(schema.names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StepError(f"{file.key}: column name {duplicates[0]!r} appears more than once; give every column a unique name")
    numeric = [f.type for f in schema if is_numeric(f.type)]
    non_numeric = tuple(f.name for f in schema if not is_numeric(f.type))
    typed = tuple(f.name for f in schema if is_numeric(f.type) and not pa.types.is_null(f.type))
    return FileSchema(file, names, non_numeric, len(names), numpy_name(numeric), typed)


def plan_columns(schemas: Sequence[FileSchema], id_column: str | None, *, check_features, explain_text_columns,
                 id_type) -> MatrixPlan:
    first = schemas[0]
    for other in schemas[1:]:
        _check_same_columns(first, other)
    explicit_id = id_column
    id_column = id_column or _detect_id_column(schemas, explain_text_columns)
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
    check_features(schemas, features)
    ids = id_type(schemas, id_column) if id_column else "int64"
    return MatrixPlan(tuple(s.file for s in schemas), first.file.format, len(features), features, id_column,
                      ids, common_dtype(schemas))


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


def _detect_id_column(schemas: Sequence[FileSchema], explain_text_columns) -> str | None:
    candidates: dict[str, str] = {}  # column -> first file where it is non-numeric
    for schema in schemas:
        for name in schema.non_numeric:
            candidates.setdefault(name, schema.file.key)
    if len(candidates) <= 1:
        return next(iter(candidates), None)
    # A CSV column of numbers with one stray word is guessed as text: name that cell, not the ambiguity.
    for schema in schemas:
        explain_text_columns(schema, [c for c in schema.non_numeric if c in candidates])
    listed = ", ".join(f"{name!r} ({key})" for name, key in candidates.items())
    raise StepError(
        f"more than one non-numeric column: {listed}; set input.id_column in pipeline.yaml to say which one holds the ids "
        "(the others must be numeric features)"
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


def features_of(batch: pa.RecordBatch | pa.Table, plan: MatrixPlan, file: InputFile, file_row: int) -> np.ndarray:
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
        bad = first_uncastable(column, pa.float64())
        raise StepError(
            f"{describe_row(file.key, file_row + bad)} column {name!r}: {column[bad].as_py()!r} is not a number; "
            "fix the value, or make this column the id column with input.id_column"
        ) from None


def first_uncastable(column: pa.Array | pa.ChunkedArray, target: pa.DataType) -> int:
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


def ids_of(batch: pa.RecordBatch | pa.Table, plan: MatrixPlan, file: InputFile, file_row: int) -> np.ndarray | None:
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

