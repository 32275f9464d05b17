"""The types every input reader shares: an input file, its schema, the plan to read them all, a batch of rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import TEXT_EXTENSIONS
from ..errors import StepError

BATCH_BUDGET_BYTES = 64 << 20  # one float64 batch stays under this, whatever the row width


@dataclass(frozen=True)
class InputFile:
    path: Path
    key: str  # relative POSIX path inside the channel: what messages and the manifest name
    format: str
    bytes: int
    delimiter: str = ","  # CSV/TSV only: what separates the fields


@dataclass(frozen=True)
class FileSchema:
    """What one file holds, read from its header/schema only."""

    file: InputFile
    columns: tuple[str, ...]  # () for npy
    non_numeric: tuple[str, ...]  # columns whose type is not numeric (id candidates)
    dim: int  # npy: width; parquet/csv: number of columns
    source_dtype: str | None  # numpy name of the file's numeric type(s), e.g. "float32"; None: no typed values
    typed: tuple[str, ...] = ()  # columns with a known numeric type (a CSV column with no values has none)
    index_columns: tuple[str, ...] = ()  # columns holding a pandas index (parquet's pandas metadata says which)
    range_index: tuple[str, ...] = ()  # names of a pandas RangeIndex kept only in the metadata
    vectors: tuple[str, ...] = ()  # parquet: list, large_list or fixed_size_list columns of numbers


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
    vector_column: str | None = None  # parquet: the list column holding each row's vector (then no feature_columns)
    ignored_columns: tuple[str, ...] = ()  # beside a vector column: columns neither the vector nor the ids

    @property
    def id_source(self) -> str:
        return f"column {self.id_column}" if self.id_column else "row number"


@dataclass(frozen=True)
class MatrixBatch:
    key: str  # the file the rows come from
    file_row: int  # 0-based row, within that file, of values[0]
    ids: np.ndarray  # int64, or object array of str
    values: np.ndarray  # float64, C-contiguous, (rows, dim); missing values are NaN (a CSR matrix for sparse input)

    def where(self, row_in_batch: int) -> str:
        """'<file> row R' (plus 'line L' for csv) for messages."""
        return describe_row(self.key, self.file_row + row_in_batch)


def describe_row(key: str, row: int) -> str:
    line = f" (line {row + 2})" if key.lower().endswith(TEXT_EXTENSIONS) else ""  # header is line 1
    return f"{key} row {row}{line}"


def batch_rows_for(dim: int, limit: int) -> int:
    """Rows per batch: at most `limit`, and a float64 batch under BATCH_BUDGET_BYTES."""
    return max(1, min(limit, BATCH_BUDGET_BYTES // (8 * max(dim, 1))))


def same_width(schemas: Sequence[FileSchema]) -> FileSchema:
    """The first schema, once every file has as many columns as it (matrix files without named columns)."""
    first = schemas[0]
    for other in schemas[1:]:
        if other.dim != first.dim:
            raise StepError(
                f"{other.file.key} has {other.dim} columns but {first.file.key} has {first.dim}; "
                "every file of the input must have the same number of columns"
            )
    return first


def common_dtype(schemas: Sequence[FileSchema]) -> str:
    known = [np.dtype(s.source_dtype) for s in schemas if s.source_dtype]
    return np.result_type(*known).name if known else "float64"

