"""What parquet and CSV share: named columns, one of them perhaps the ids, the others numeric features.

A format module passes in what only it can know: `check_features` (parquet's real types), `explain_text_columns`
(CSV's sampled types: a number column with a stray word is guessed as text) and `id_type`.
"""
from __future__ import annotations

import json
import re
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StepError
from .base import FileSchema, InputFile, MatrixPlan, common_dtype, describe_row

# Numeric columns that hold ids or a saved index, not features. A name is split into words (snake_case,
# kebab-case, spaces, camelCase: `userId` -> user, id) and is id-like when its first or last word is one of
# these: `id`, `user_id`, `userId`, `itemID`, `sku`, `SKU_code`, `row_idx`, `uuid`, ...
ID_WORDS = frozenset({"id", "ids", "uid", "uuid", "guid", "key", "pk", "index", "idx", "sku", "ean", "upc", "isbn",
                      "asin"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# What pandas writes for an index: to_csv's unnamed `` / `Unnamed: 0`, reset_index's `index` / `level_0`,
# to_parquet's `__index_level_0__` (and any column its metadata lists in index_columns).
_SAVED_INDEX = re.compile(r"(?i)|unnamed: ?\d+|index|level_\d+|__index_level_\d+__")


def looks_like_id(name: str) -> bool:
    words = [w.lower() for w in _WORD.findall(name)]
    return bool(words) and (words[0] in ID_WORDS or words[-1] in ID_WORDS)


def is_numeric(arrow_type: pa.DataType) -> bool:
    # null: a column with no values yet (empty file, or all-missing first block); its NaNs are reported later
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type) \
        or pa.types.is_null(arrow_type)


def is_vector(arrow_type: pa.DataType) -> bool:
    """A list, large_list or fixed_size_list of numbers: a column of vectors."""
    nested = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) \
        or pa.types.is_fixed_size_list(arrow_type)
    return nested and is_numeric(arrow_type.value_type) and not pa.types.is_null(arrow_type.value_type)


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
    vectors = tuple(f.name for f in schema if is_vector(f.type))
    non_numeric = tuple(f.name for f in schema if not is_numeric(f.type) and f.name not in vectors)
    typed = tuple(f.name for f in schema if is_numeric(f.type) and not pa.types.is_null(f.type))
    stored, ranged = saved_index(schema)
    return FileSchema(file, names, non_numeric, len(names), numpy_name(numeric), typed, stored, ranged, vectors)


def saved_index(schema: pa.Schema) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the columns pandas stored its index in, the names of its range indexes) from the schema's pandas
    metadata: `df[mask].to_parquet()` keeps the filtered index as a column; a RangeIndex is metadata only."""
    try:
        listed = (schema.pandas_metadata or {}).get("index_columns") or []
    except (ValueError, TypeError, AttributeError):  # metadata that is not pandas' JSON: nothing to learn from it
        return (), ()
    stored = tuple(name for name in listed if isinstance(name, str) and name in schema.names)
    ranged = tuple(str(entry.get("name")) for entry in listed if isinstance(entry, dict) and entry.get("name"))
    return stored, ranged


def plan_columns(schemas: Sequence[FileSchema], id_column: str | None, *, check_features, explain_text_columns,
                 id_type) -> MatrixPlan:
    first = schemas[0]
    for other in schemas[1:]:
        check_same_columns(first, other)
    id_column = id_column or detect_id_column(schemas, explain_text_columns)
    if id_column is not None and id_column not in first.columns:
        ranged = (f"; pandas kept {id_column!r} as a range index in the file's metadata, not as a column: write it "
                  "as a column (df.reset_index().to_parquet(index=False))" if id_column in first.range_index else "")
        raise StepError(
            f"{first.file.key}: id column {id_column!r} (input.id_column) not found; "
            f"columns present: {', '.join(first.columns)}{ranged}; fix input.id_column in pipeline.yaml"
        )
    features = tuple(c for c in first.columns if c != id_column)
    if not features:
        separator = next((sep for sep in ",;\t|" if id_column and sep in id_column and sep != first.file.delimiter),
                         None)
        hint = (f"; the header looks {separator!r}-separated, but this file is read as "
                f"{first.file.delimiter!r}-separated: set input.delimiter: {json.dumps(separator)} in pipeline.yaml"
                if separator else "")
        raise StepError(
            f"{first.file.key}: no feature columns (only the id column {id_column!r}); "
            f"the input needs at least one numeric column{hint}"
        )
    for schema in schemas:  # every file: pandas metadata differs from file to file
        _check_id_like_features(schema, features)
    check_features(schemas, features)
    ids = id_type(schemas, id_column) if id_column else "int64"
    return MatrixPlan(tuple(s.file for s in schemas), first.file.format, len(features), features, id_column,
                      ids, common_dtype(schemas))


def check_same_columns(first: FileSchema, other: FileSchema) -> None:
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


def detect_id_column(schemas: Sequence[FileSchema], explain_text_columns) -> str | None:
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


def _check_id_like_features(schema: FileSchema, features: Sequence[str]) -> None:
    """A numeric column named like an id, or pandas' saved index, would silently become a feature (whether the
    id column was detected or named: the column that is named is not a feature, these would be)."""
    writer = "to_parquet(index=False)" if schema.file.format == "parquet" else "to_csv(index=False)"
    for name in features:
        if name in schema.index_columns or (name in schema.typed and _SAVED_INDEX.fullmatch(name)):
            raise StepError(
                f"{schema.file.key}: column {name!r} looks like a saved pandas index, so it would be used as a "
                f"feature; write the file without it ({writer}), or name it in input.id_column"
            )
        if name in schema.typed and looks_like_id(name):
            raise StepError(
                f"{schema.file.key}: column {name!r} is numeric and named like an id, so it would be "
                f"used as a feature; set input.id_column: {name} in pipeline.yaml (or drop or rename the column "
                "if it really is a feature)"
            )


def features_of(batch: pa.RecordBatch | pa.Table, plan: MatrixPlan, file: InputFile, file_row: int) -> np.ndarray:
    values = np.empty((batch.num_rows, plan.dim), dtype=np.float64)
    for j, name in enumerate(plan.feature_columns):
        converted, text = _as_float64(batch.column(name), file, file_row, name)
        numbers = converted.to_numpy(zero_copy_only=False)  # nulls become NaN
        if text is not None:
            _refuse_zero_padded(text, numbers, file, file_row, name)
        values[:, j] = numbers
    return values


def _as_float64(column: pa.Array | pa.ChunkedArray, file: InputFile, file_row: int,
                name: str) -> tuple[pa.Array, pa.Array | None]:
    """(the values as float64, the text they were read from: None for typed values)."""
    if not pa.types.is_string(column.type):
        return pc.cast(column, pa.float64()), None
    try:
        values = pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        column = pc.utf8_trim_whitespace(column)  # " 2.5" is a number to a human; retry only when needed
        try:
            values = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            bad = first_uncastable(column, pa.float64())
            raise StepError(
                f"{describe_row(file.key, file_row + bad)} column {name!r}: {column[bad].as_py()!r} is not a number; "
                "fix the value, or make this column the id column with input.id_column"
            ) from None
    return values, column


def _refuse_zero_padded(column: pa.Array | pa.ChunkedArray, numbers: np.ndarray, file: InputFile, file_row: int,
                        name: str) -> None:
    """Text that reads as a number only by dropping leading zeros ("00123", "-007") is a code (a sku, a zip
    code), whatever the column is called: as a feature it would be silently misread."""
    texts = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    row = 0
    for text in texts:
        padded = zero_padded(text, numbers[row:row + len(text)])
        if len(padded):
            bad = row + int(padded[0])
            raise StepError(
                f"{describe_row(file.key, file_row + bad)} column {name!r}: {column[bad].as_py()!r} is a zero-padded "
                f"number, so the column holds codes, not quantities, and would be misread as a feature; set "
                f"input.id_column: {name} in pipeline.yaml (or write the numbers without leading zeros if it really "
                "is a feature)"
            )
        row += len(text)


def zero_padded(text: pa.Array, numbers: np.ndarray) -> np.ndarray:
    """Indices of the strings that are whole numbers written with leading zeros, `numbers` being their values.
    Only whole numbers written longer than their digits are looked at, byte by byte (a regex over every value
    made reading a CSV 1.7 times slower)."""
    magnitude = np.abs(numbers)
    whole = np.flatnonzero((magnitude >= 1) & (magnitude < 1e15) & (magnitude == np.floor(magnitude)))
    if not len(whole):
        return whole
    _, offsets, data = text.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int32, count=len(text) + 1, offset=text.offset * 4)
    data = np.frombuffer(data, dtype=np.uint8)
    lengths = offsets[1:][whole] - offsets[:-1][whole]
    digits = np.floor(np.log10(magnitude[whole])).astype(np.int64) + 1 + (numbers[whole] < 0)
    longer, lengths = whole[lengths > digits], lengths[lengths > digits]  # "007", but also "7.0", "+7"
    starts = offsets[:-1][longer]
    first, second = data[starts], data[starts + 1]  # longer than one digit: two bytes at least
    third = np.where(lengths > 2, data[np.minimum(starts + 2, len(data) - 1)], 0)
    digit = lambda b: (b >= ord("0")) & (b <= ord("9"))  # noqa: E731
    signed = (first == ord("-")) | (first == ord("+"))
    return longer[((first == ord("0")) & digit(second)) | (signed & (second == ord("0")) & digit(third))]


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

