"""Parquet input: numeric feature columns, or one list column of vectors (an `embedding` column as
sentence-transformers, Hugging Face datasets or LanceDB write it), and at most one id column; types read from
the schema."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import StepError
from . import columns
from .base import FileSchema, InputFile, MatrixPlan, common_dtype, describe_row

FORMAT = "parquet"
DIM_PROBE_ROWS = 1024  # a list column's length is read from its first non-null vector, this many rows at a time


def plan(schemas: Sequence[FileSchema], id_column: str | None, vector_column: str | None = None) -> MatrixPlan:
    vector = _vector_column(schemas, vector_column)
    if vector is not None:
        return _plan_vectors(schemas, id_column, vector)
    return columns.plan_columns(schemas, id_column, check_features=check_features,
                                explain_text_columns=explain_text_columns, id_type=id_type)


# ---- a column of vectors -----------------------------------------------------------------------------------------


def _vector_column(schemas: Sequence[FileSchema], named: str | None) -> str | None:
    """The list column holding the vectors: the one input.vector_column names, else the only one; None: none."""
    if named is None:
        found = list(dict.fromkeys(name for schema in schemas for name in schema.vectors))
        if len(found) > 1:
            holder = next(s for s in schemas if len(s.vectors) > 1 or set(s.vectors) != set(found[:1]))
            raise StepError(
                f"{holder.file.key}: more than one list column of numbers ({', '.join(map(repr, found))}); set "
                "input.vector_column in pipeline.yaml to the one holding the vectors"
            )
        return found[0] if found else None
    for schema in schemas:
        if named not in schema.columns:
            raise StepError(
                f"{schema.file.key}: vector column {named!r} (input.vector_column) not found; columns present: "
                f"{', '.join(schema.columns)}; fix input.vector_column in pipeline.yaml"
            )
        if named not in schema.vectors:
            raise StepError(
                f"{schema.file.key}: column {named!r} (input.vector_column) is {_arrow_type(schema, named)}, not a list "
                "of numbers; name the list column holding the vectors, or remove input.vector_column to read one "
                "numeric column per feature"
            )
    return named


def _plan_vectors(schemas: Sequence[FileSchema], id_column: str | None, vector: str) -> MatrixPlan:
    first = schemas[0]
    for other in schemas[1:]:
        columns.check_same_columns(first, other)
    if id_column == vector:
        raise StepError(f"{first.file.key}: column {vector!r} holds the vectors, so it cannot be the id column "
                        "(input.id_column); name the column holding the ids")
    if id_column is not None and id_column not in first.columns:
        raise StepError(
            f"{first.file.key}: id column {id_column!r} (input.id_column) not found; "
            f"columns present: {', '.join(first.columns)}; fix input.id_column in pipeline.yaml"
        )
    id_column = id_column or _detect_id_column(schemas)
    others = tuple(c for c in first.columns if c not in (vector, id_column))
    for schema in schemas:  # a numeric id left unnamed would silently make the ids row numbers
        for name in others:
            if name in schema.typed and (columns.looks_like_id(name) or name in schema.index_columns):
                raise StepError(
                    f"{schema.file.key}: column {name!r} is numeric and named like an id, but ids are row numbers "
                    f"unless named; set input.id_column: {name} in pipeline.yaml (or drop or rename the column)"
                )
    dim = _vector_dim(schemas, vector)
    value_types = [_arrow_type(s, vector).value_type for s in schemas]
    dtype = columns.numpy_name(value_types) or common_dtype(())
    ids = id_type(schemas, id_column) if id_column else "int64"
    return MatrixPlan(tuple(s.file for s in schemas), FORMAT, dim, (), id_column, ids, dtype, vector, others)


def _detect_id_column(schemas: Sequence[FileSchema]) -> str | None:
    """Beside vectors: the only non-numeric column is the ids; several need input.id_column to say which."""
    candidates: dict[str, str] = {}  # column -> first file holding it
    for schema in schemas:
        for name in schema.non_numeric:
            candidates.setdefault(name, schema.file.key)
    if len(candidates) > 1:
        listed = ", ".join(f"{name!r} ({key})" for name, key in candidates.items())
        raise StepError(f"more than one non-numeric column beside the vectors: {listed}; set input.id_column in "
                        "pipeline.yaml to say which one holds the ids (the others are ignored)")
    return next(iter(candidates), None)


def _vector_dim(schemas: Sequence[FileSchema], vector: str) -> int:
    """Every file's vector length (a fixed_size_list's from its type, a list's from its first non-null vector),
    checked to agree."""
    found: tuple[str, int] | None = None
    for schema in schemas:
        arrow_type = _arrow_type(schema, vector)
        dim = arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else _first_length(schema.file, vector)
        if dim is None:  # no vector in this file (no rows, or only nulls)
            continue
        if dim == 0:
            raise StepError(f"{schema.file.key}: column {vector!r} holds empty vectors (0 values); every vector needs "
                            "at least one value")
        if found is not None and dim != found[1]:
            raise StepError(
                f"{schema.file.key}: column {vector!r} holds vectors of {dim} values, but {found[0]} holds vectors "
                f"of {found[1]}; every vector of the input must have the same length"
            )
        found = found or (schema.file.key, dim)
    if found is None:
        first_key = schemas[0].file.key
        where = first_key if len(schemas) == 1 else f"{len(schemas)} files ({first_key}, ...)"
        raise StepError(f"{where}: column {vector!r} holds no vectors (no rows, or every vector is null); point "
                        "InputData at a matrix with at least one row")
    return found[1]


def _first_length(file: InputFile, vector: str) -> int | None:
    try:
        for batch in pq.ParquetFile(file.path).iter_batches(batch_size=DIM_PROBE_ROWS, columns=[vector]):
            lengths = pc.drop_null(pc.list_value_length(batch.column(0)))
            if len(lengths):
                return lengths[0].as_py()
    except (pa.ArrowException, OSError) as exc:
        raise StepError(f"{file.key}: cannot read Parquet data ({exc}); re-export the file") from exc
    return None


def vectors_of(batch: pa.RecordBatch, plan: MatrixPlan, file: InputFile, file_row: int) -> np.ndarray:
    """The batch's vectors as float64 rows; a null vector is a row of NaN, a null value a NaN (the NaN policy
    decides), a vector of another length is an error naming its row."""
    column = batch.column(plan.vector_column)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)  # NaN for a null vector
    present = ~np.isnan(lengths) if lengths.dtype.kind == "f" else np.ones(len(lengths), bool)
    wrong = np.flatnonzero(present & (lengths != plan.dim))
    if len(wrong):
        row = int(wrong[0])
        raise StepError(
            f"{describe_row(file.key, file_row + row)} column {plan.vector_column!r}: a vector of {int(lengths[row])} "
            f"values, but the input's vectors have {plan.dim}; every vector must have the same length"
        )
    values = np.full((len(column), plan.dim), np.nan)
    flat = pc.cast(column.flatten(), pa.float64()).to_numpy(zero_copy_only=False)  # null vectors skipped
    values[present] = flat.reshape(-1, plan.dim)
    return values


def _arrow_type(schema: FileSchema, name: str) -> pa.DataType:
    return pq.ParquetFile(schema.file.path).schema_arrow.field(name).type


# ---- one numeric column per feature ------------------------------------------------------------------------------


def explain_text_columns(schema: FileSchema, names: Sequence[str]) -> None:
    """Parquet types are real: a text column is text."""


def check_features(schemas: Sequence[FileSchema], features: Sequence[str]) -> None:
    for schema in schemas:
        _check_numeric_features(schema, features)


def read_schema(file: InputFile) -> FileSchema:
    try:
        schema = pq.ParquetFile(file.path).schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise StepError(f"{file.key}: not a readable Parquet file ({exc}); re-export it or remove it from the input") from exc
    return columns.columns_schema(file, schema)


def _check_numeric_features(schema: FileSchema, features: Sequence[str]) -> None:
    for name in features:
        if name in schema.non_numeric:
            arrow_type = pq.ParquetFile(schema.file.path).schema_arrow.field(name).type
            raise StepError(
                f"{schema.file.key}: column {name!r} is {arrow_type}, not numeric; store features as numbers "
                "(int or float), or make it the id column with input.id_column"
            )


def id_type(schemas: Sequence[FileSchema], id_column: str) -> str:
    kinds = {}
    for schema in schemas:
        arrow_type = pq.ParquetFile(schema.file.path).schema_arrow.field(id_column).type
        if pa.types.is_nested(arrow_type):
            raise StepError(
                f"{schema.file.key}: column {id_column!r} is {arrow_type}, so it cannot be the id column (ids are "
                "strings or integers); if it holds the vectors, store them as a list of numbers (float or int)"
            )
        kinds.setdefault("int64" if pa.types.is_integer(arrow_type) else "string", (schema.file.key, arrow_type))
    if len(kinds) > 1:
        (key_a, type_a), (key_b, type_b) = kinds.values()
        raise StepError(
            f"id column {id_column!r} is {type_a} in {key_a} but {type_b} in {key_b}; "
            "give the id column one type in every file"
        )
    return next(iter(kinds))


def iter_rows(file: InputFile, plan: MatrixPlan, batch_rows: int):
    features = [plan.vector_column] if plan.vector_column else list(plan.feature_columns)
    wanted = features + ([plan.id_column] if plan.id_column else [])
    values_of = vectors_of if plan.vector_column else columns.features_of
    try:
        batches = pq.ParquetFile(file.path).iter_batches(batch_size=batch_rows, columns=wanted)
        file_row = 0
        for batch in batches:
            yield file_row, columns.ids_of(batch, plan, file, file_row), values_of(batch, plan, file, file_row)
            file_row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise StepError(f"{file.key}: cannot read Parquet data ({exc}); re-export the file") from exc
