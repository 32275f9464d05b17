"""Parquet input: numeric feature columns and at most one id column, types read from the schema."""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StepError
from . import columns
from .base import FileSchema, InputFile, MatrixPlan

FORMAT, EXTENSIONS = "parquet", (".parquet",)


def plan(schemas: Sequence[FileSchema], id_column: str | None) -> MatrixPlan:
    return columns.plan_columns(schemas, id_column, check_features=check_features,
                                explain_text_columns=explain_text_columns, id_type=id_type)


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


def iter_rows(file: InputFile, plan: MatrixPlan, batch_rows: int):
    wanted = list(plan.feature_columns) + ([plan.id_column] if plan.id_column else [])
    try:
        batches = pq.ParquetFile(file.path).iter_batches(batch_size=batch_rows, columns=wanted)
        file_row = 0
        for batch in batches:
            yield file_row, columns.ids_of(batch, plan, file, file_row), columns.features_of(batch, plan, file, file_row)
            file_row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise StepError(f"{file.key}: cannot read Parquet data ({exc}); re-export the file") from exc
