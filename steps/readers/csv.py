"""CSV input (delimited text with a header row: .csv, .tsv, either .gz/.bz2/.zst compressed): everything read
as text and converted here, so a bad value is reported with its row, line and column. CSV ids are always strings
("00123" must stay "00123"). pyarrow parses (and decompresses, by extension); the delimiter is the file's
(InputFile.delimiter: input.delimiter, else a tab for .tsv, else a comma)."""
from __future__ import annotations

import csv
import io
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import StepError
from . import columns
from .base import FileSchema, InputFile, MatrixPlan

FORMAT = "csv"
STRAY_TEXT_SHARE = 0.9  # a sampled column this numeric is a feature with bad cells, not an id column
CSV_BLOCK_BYTES = 1 << 22  # pyarrow parses CSV in blocks of this size; bounds memory and the type-inference sample
CSV_MAX_LINE_BYTES = 64 << 20  # a block must hold a whole line: wider rows belong in .npy or .parquet


def plan(schemas: Sequence[FileSchema], id_column: str | None, vector_column: str | None = None) -> MatrixPlan:
    if vector_column:
        raise StepError(
            f"vector column {vector_column!r} was named (input.vector_column), but the input is CSV, which has one "
            "column per feature; remove input.vector_column, or provide parquet with a list column of that name"
        )
    return columns.plan_columns(schemas, id_column, check_features=check_features,
                                explain_text_columns=explain_text_columns, id_type=id_type)


def check_features(schemas: Sequence[FileSchema], features: Sequence[str]) -> None:
    """CSV types are only guessed from a sample: features are checked value by value while reading."""


def id_type(schemas: Sequence[FileSchema], id_column: str) -> str:
    return "string"


def read_schema(file: InputFile) -> FileSchema:
    # open_csv infers types from the first block only; that is the sample id detection works from.
    try:
        schema = _open_csv(file).schema
    except pa.ArrowInvalid as exc:
        raise _csv_error(file, exc) from exc
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    _check_csv_header(file, schema.names)
    return columns.columns_schema(file, schema)


def _check_csv_header(file: InputFile, names: Sequence[str]) -> None:
    if all(_looks_numeric(n) for n in names):
        shown = file.delimiter.join(names[:4]) + (f"{file.delimiter}..." if len(names) > 4 else "")
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


def explain_text_columns(schema: FileSchema, names: Sequence[str]) -> None:
    """In the sampled block, a text column whose values are nearly all numbers is a feature with a bad cell."""
    try:
        block = _open_csv(schema.file, {c: pa.string() for c in names}).read_next_batch()
    except (pa.ArrowInvalid, StopIteration):
        return
    for name in names:
        values = block.column(name).to_pandas()
        present = values.notna()
        numbers = pd.to_numeric(values, errors="coerce").notna()
        if present.sum() and numbers.sum() >= STRAY_TEXT_SHARE * present.sum():
            row = int(np.flatnonzero(present & ~numbers)[0])
            raise StepError(
                f"{schema.file.key} row {row} (line {row + 2}) column {name!r}: {values.iloc[row]!r} is not a number; "
                "fix the value, or make this column the id column with input.id_column"
            )


def iter_rows(file: InputFile, plan: MatrixPlan, batch_rows: int):
    # Everything is read as text and converted here, so a bad value is reported with its row and column.
    text_types = {name: pa.string() for name in plan.feature_columns + ((plan.id_column,) if plan.id_column else ())}
    try:
        reader = _open_csv(file, text_types)
        _check_csv_header(file, reader.schema.names)
        file_row = 0
        for block in reader:
            for offset in range(0, block.num_rows, batch_rows):
                batch = block.slice(offset, batch_rows)
                yield file_row, columns.ids_of(batch, plan, file, file_row), columns.features_of(batch, plan, file, file_row)
                file_row += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise _csv_error(file, exc) from exc
    except OSError as exc:
        raise _unreadable(file, exc) from exc


def _unreadable(file: InputFile, exc: OSError) -> StepError:
    """A compressed file that does not decompress (torn in a copy, or not what its extension says)."""
    return StepError(f"{file.key}: cannot be read or decompressed ({exc}); copy it again, or give it the extension "
                     "of its compression (.gz, .bz2, .zst; none for plain text)")


def block_bytes(file: InputFile) -> int:
    """pyarrow's block must hold a whole line (else "straddling object"): at least CSV_BLOCK_BYTES, and twice the
    longest of the header and the first row, so a matrix of 100,000 columns reads as well as one of 10."""
    with _open_text(file) as f:
        longest = max(len(f.readline(CSV_MAX_LINE_BYTES + 1)) for _ in range(2))
    if longest > CSV_MAX_LINE_BYTES:
        raise StepError(f"{file.key}: a line of more than {CSV_MAX_LINE_BYTES >> 20} MB; CSV rows this wide are not "
                        "read: save the matrix as .npy or .parquet")
    return max(CSV_BLOCK_BYTES, 2 * longest)


def _open_csv(file: InputFile, column_types: dict | None = None) -> pacsv.CSVStreamingReader:
    convert = pacsv.ConvertOptions(
        column_types=column_types or {},
        strings_can_be_null=True,  # an empty field is a missing value (NaN), not the text ""
        null_values=[""],
        quoted_strings_can_be_null=False,
    )
    return pacsv.open_csv(file.path, read_options=pacsv.ReadOptions(block_size=block_bytes(file), use_threads=False),
                          parse_options=pacsv.ParseOptions(delimiter=file.delimiter), convert_options=convert)


def _open_text(file: InputFile) -> io.BufferedReader:
    """The file's bytes, decompressed as its extension says (.gz, .bz2, .zst), as pyarrow's reader sees them."""
    return io.BufferedReader(pa.input_stream(file.path, compression="detect"))


def _csv_error(file: InputFile, exc: Exception) -> StepError:
    if "straddl" in str(exc):  # a line longer than the block, which was sized from the first lines
        return StepError(f"{file.key}: a line is more than {block_bytes(file)} bytes long, over twice as long as the "
                         "first row; give every row the same columns (a stray line break or quote?), or save the "
                         "matrix as .npy or .parquet")
    ragged = _find_ragged_line(file)
    if ragged is not None:
        line, expected, found = ragged
        return StepError(
            f"{file.key} line {line}: {found} fields, but the header has {expected}; "
            f"fix that line (a missing or extra {_delimiter_name(file)}, or a value with a {_delimiter_name(file)} "
            "that needs quotes)"
        )
    return StepError(f"{file.key}: cannot parse CSV ({exc}); save it as UTF-8 CSV with a header row")


def _delimiter_name(file: InputFile) -> str:
    return {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}.get(file.delimiter, repr(file.delimiter))


def _find_ragged_line(file: InputFile) -> tuple[int, int, int] | None:
    """(line, header fields, fields found) of the first row whose width differs from the header; error path only."""
    with io.TextIOWrapper(_open_text(file), newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f, delimiter=file.delimiter)
        header = next(rows, None)
        if header is None:
            return None
        for row in rows:
            if row and len(row) != len(header):  # blank lines are skipped, as pyarrow does
                return rows.line_num, len(header), len(row)
    return None
