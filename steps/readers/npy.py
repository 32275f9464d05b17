"""Dense .npy input (numpy.save): 2-D, numeric; ids are row numbers. Read with plain reads, not a memory map."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import npy
from ..errors import StepError, brief
from .base import FileSchema, InputFile, MatrixPlan, common_dtype, same_width

FORMAT = "npy"


def read_schema(file: InputFile) -> FileSchema:
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
        raise StepError(f"{file.key}: not a valid .npy file ({brief(exc)}); {fix}") from exc
    if dtype.hasobject:
        raise StepError(f"{file.key}: holds Python objects, not numbers; {fix} after converting it to a numeric dtype")
    expected = data_offset + math.prod(shape) * dtype.itemsize  # Python integers: no overflow, whatever the shape
    if file.bytes < expected:
        raise StepError(
            f"{file.key}: truncated .npy file: header says shape {shape} {dtype} ({expected} bytes) "
            f"but the file has {file.bytes} bytes; copy it again or {fix}"
        )
    return shape, dtype, data_offset


def plan(schemas: Sequence[FileSchema], id_column: str | None, vector_column: str | None = None) -> MatrixPlan:
    if vector_column:
        raise StepError(
            f"vector column {vector_column!r} was named (input.vector_column), but the input is .npy, whose rows are "
            "the vectors; remove input.vector_column"
        )
    if id_column:
        raise StepError(
            f"id column {id_column!r} was named (input.id_column), but the input is .npy, which has no named columns; "
            "remove input.id_column (ids are then row numbers) or provide parquet/csv with that column"
        )
    first = same_width(schemas)
    return MatrixPlan(tuple(s.file for s in schemas), "npy", first.dim, (), None, "int64", common_dtype(schemas))


def iter_rows(file: InputFile, plan: MatrixPlan, batch_rows: int):
    header = npy.read_header(file.path)  # already validated by _npy_header
    # Plain reads, not a memory map: mapped pages would stay counted in memory until the whole file is done.
    for start in range(0, header.shape[0], batch_rows):
        values = npy.read_rows(file.path, start, start + batch_rows, header).astype(np.float64)
        yield start, None, values

