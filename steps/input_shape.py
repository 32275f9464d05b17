"""An input matrix's shape, read cheaply: .npy headers and Parquet footers give it exactly, a CSV's header and
first bytes give its dimension and an estimate of its rows. Nothing else of the data is read.

Everything goes through a byte-range reader, so one function serves a local folder (Preprocess's progress
lines; `python -m pipeline plan` and `run`'s fit check) and an S3 prefix (`start`'s fit check, through
pipeline/aws.py). Steps and pipeline/ both use it: it imports nothing of the steps but the contract.

The file rules are the input channel's (steps/readers): files in key order, hidden and `_`-prefixed paths
skipped, the format by extension. The dimension counts the numeric columns, less the id column (the one named,
or else the only non-numeric one); for a CSV that is judged from its first data line. A parquet vector column
(a list of numbers: the one named, or the only one) gives the dimension instead: a fixed_size_list's size, or
a list's values per row as the footer counts them. A compressed CSV/TSV (.gz, .bz2) is read through a
streaming decompressor: its rows are estimated from the compressed bytes the sample took; .zst is not estimated.
"""
from __future__ import annotations

import ast
import bz2
import csv
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .contract import INPUT_EXTENSIONS, input_delimiter, input_format

CSV_SAMPLE_BYTES = 1 << 20  # the first MiB of a CSV: its header, and the mean line length the rows are estimated from
MAX_FILES_READ = 200  # past this many files, the rows of the rest are extrapolated from their bytes

Read = Callable[[str, int, int], bytes]  # (key, offset, length) -> those bytes; a negative offset counts from the end


class ShapeUnknown(Exception):
    """The shape cannot be read cheaply (the reason, one line)."""


@dataclass(frozen=True)
class InputShape:
    rows: int
    dim: int
    exact: bool  # False: the rows are an estimate (CSV, or files past MAX_FILES_READ)
    format: str
    files: int
    bytes: int
    source_bytes_per_value: int  # what one input value takes (8 for float64); a CSV counts as 8

    def describe(self) -> str:
        how = "exact" if self.exact else "estimated"
        return (f"{self.rows:,} rows x {self.dim} ({how}; {self.files} {self.format} file"
                f"{'s' if self.files != 1 else ''}, {self.bytes / 1e6:,.1f} MB)")


def is_skipped(key: str) -> bool:
    """Hidden files, `_SUCCESS` markers, `_temporary/`: the readers skip them (steps/readers/__init__.py)."""
    return any(part.startswith((".", "_")) for part in key.split("/"))


def read_shape(files: Sequence[tuple[str, int]], read: Read, id_column: str | None = None, *,
               vector_column: str | None = None, delimiter: str | None = None) -> InputShape:
    """The shape of the matrix made of `files` ((key, bytes), keys relative to the input root)."""
    data = sorted((key, size) for key, size in files if not is_skipped(key))
    if not data:
        raise ShapeUnknown("no data files")
    formats = {input_format(key) for key, _ in data}
    if len(formats) != 1 or None in formats:
        raise ShapeUnknown(f"not one format of {', '.join(sorted(INPUT_EXTENSIONS))} ({data[0][0]}, ...)")
    fmt = formats.pop()
    if fmt == "npz":  # the sizes below (rows x dim x 4 bytes) are a dense matrix's: not a sparse one's
        raise ShapeUnknown("sparse .npz input is not sized ahead (`python -m pipeline plan --rows N --dim D "
                           "--density P` sizes it)")
    reader = {"npy": _npy, "parquet": _parquet, "csv": _csv}[fmt]
    rows = read_bytes = 0
    dim, exact, width = None, True, 8
    for key, size in data[:MAX_FILES_READ]:
        try:
            file_rows, file_dim, width, file_exact = reader(key, size, read, id_column,
                                                            vector_column if fmt == "parquet" else delimiter)
        except ShapeUnknown:
            raise
        except Exception as exc:  # a torn or foreign file: Preprocess will say what is wrong with it
            raise ShapeUnknown(f"{key}: not a readable {fmt} file ({type(exc).__name__}: {exc})") from None
        rows, read_bytes, dim, exact = rows + file_rows, read_bytes + size, dim or file_dim, exact and file_exact
    total = sum(size for _, size in data)
    if len(data) > MAX_FILES_READ:
        rows, exact = round(rows * total / max(read_bytes, 1)), False
    return InputShape(rows, dim or 0, exact, fmt, len(data), total, width)


def local_input(path: Path) -> tuple[list[tuple[str, int]], Read]:
    """A local file or folder as (files, reader), for read_shape."""
    path = Path(path)
    if path.is_file():
        paths = {path.name: path}
    elif path.is_dir():
        paths = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
    else:
        raise ShapeUnknown(f"{path} does not exist")
    return [(key, p.stat().st_size) for key, p in paths.items()], file_reader(paths)


def file_reader(paths: Mapping[str, Path]) -> Read:
    """Reads byte ranges of local files, by key."""
    def read(key: str, offset: int, length: int) -> bytes:
        with open(paths[key], "rb") as f:
            f.seek(offset if offset >= 0 else max(0, f.seek(0, io.SEEK_END) + offset))
            return f.read(length)
    return read


# ---- one reader per format: (rows, dim, bytes per value, rows exact) --------------------------------------------------


def _npy(key: str, size: int, read: Read, id_column: str | None, _: str | None) -> tuple[int, int, int, bool]:
    head = read(key, 0, 4096)
    if head[:6] != b"\x93NUMPY":
        raise ShapeUnknown(f"{key}: not a .npy file")
    major = head[6]
    length, start = (struct.unpack("<H", head[8:10])[0], 10) if major == 1 else (struct.unpack("<I", head[8:12])[0], 12)
    header = ast.literal_eval(head[start:start + length].decode("latin1"))
    shape, descr = header["shape"], header["descr"]
    if len(shape) != 2:
        raise ShapeUnknown(f"{key}: shape {shape}, not a 2-D matrix")
    width = int(descr[-1]) if isinstance(descr, str) and descr[-1].isdigit() else 8
    return int(shape[0]), int(shape[1]), width, True


def _parquet(key: str, size: int, read: Read, id_column: str | None,
             vector_column: str | None) -> tuple[int, int, int, bool]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tail = read(key, -8, 8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ShapeUnknown(f"{key}: not a Parquet file")
    (length,) = struct.unpack("<i", tail[:4])
    footer = read(key, -(8 + length), length + 8)
    metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    schema = metadata.schema.to_arrow_schema()
    vectors = [f for f in schema if _is_vector(f.type) and vector_column in (None, f.name)]
    if len(vectors) == 1:
        return (metadata.num_rows, _vector_dim(metadata, schema, vectors[0]), _width([vectors[0].type.value_type]),
                True)
    numeric = [f for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
               or pa.types.is_boolean(f.type) or pa.types.is_decimal(f.type)]
    features = [f for f in numeric if f.name != id_column and not f.name.startswith("__index_level_")]
    return metadata.num_rows, len(features), _width([f.type for f in features]), True


def _width(types) -> int:
    return max((t.bit_width // 8 for t in types if hasattr(t, "bit_width") and t.bit_width >= 8), default=8)


def _is_vector(arrow_type) -> bool:
    import pyarrow as pa

    nested = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) \
        or pa.types.is_fixed_size_list(arrow_type)
    value = arrow_type.value_type if nested else None
    return nested and (pa.types.is_integer(value) or pa.types.is_floating(value))


def _vector_dim(metadata, schema, field) -> int:
    """A fixed_size_list's size; else the values the footer counts in the column's chunks, per row."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(field.type):
        return field.type.list_size
    leaf = next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path.split(".")[0] == field.name)
    values = sum(metadata.row_group(g).column(leaf).num_values for g in range(metadata.num_row_groups))
    return round(values / metadata.num_rows) if metadata.num_rows else 0


def _csv(key: str, size: int, read: Read, id_column: str | None,
         delimiter: str | None) -> tuple[int, int, int, bool]:
    sample = read(key, 0, min(size, CSV_SAMPLE_BYTES))
    raw = _decompressed(key, sample)
    whole = len(sample) >= size
    lines = raw.decode("utf-8", "replace").splitlines()
    complete = lines if whole else lines[:-1]  # the last line of a sample may be cut
    if not complete:
        raise ShapeUnknown(f"{key}: no CSV header in its first {CSV_SAMPLE_BYTES} bytes")
    sep = input_delimiter(key, delimiter)
    header = next(csv.reader([complete[0]], delimiter=sep))
    first = next(csv.reader([complete[1]], delimiter=sep), []) if len(complete) > 1 else []
    text = {name for name, value in zip(header, first) if value and not _is_number(value)}
    features = [name for name in header if name != id_column and name not in text]
    if id_column is None and len(text) > 1:
        features = header  # Preprocess will refuse several text columns; the estimate counts them all
    data_lines = [line for line in complete[1:] if line.strip()]
    if whole:
        rows = len(data_lines)
    elif raw is not sample:  # compressed: the sample's compressed bytes stand for the lines they gave
        rows = round(size * len(data_lines) / max(len(sample), 1))
    else:
        body = sum(len(line.encode()) + 1 for line in data_lines)
        rows = round((size - len(complete[0].encode()) - 1) * len(data_lines) / max(body, 1))
    return rows, len(features), 8, whole


def _decompressed(key: str, sample: bytes) -> bytes:
    """The text a (possibly cut) compressed sample starts with; the sample itself when not compressed."""
    lower = key.lower()
    if lower.endswith(".gz"):
        return zlib.decompressobj(wbits=47).decompress(sample)  # 47: a gzip or zlib header, read from the data
    if lower.endswith(".bz2"):
        return bz2.BZ2Decompressor().decompress(sample)
    if lower.endswith(".zst"):
        raise ShapeUnknown(f"{key}: zstd-compressed; its shape is known once Preprocess reads it")
    return sample


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
