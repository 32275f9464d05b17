"""An input matrix's shape, read cheaply: .npy headers and Parquet footers give it exactly, a CSV's header and
first bytes give its dimension and an estimate of its rows. Nothing else of the data is read.

Everything goes through a byte-range reader, so one function serves a local folder (Preprocess's progress
lines; `python -m pipeline plan` and `run`'s fit check) and an S3 prefix (`start`'s fit check, through
pipeline/aws.py). Steps and pipeline/ both use it: it imports nothing of the steps but the contract.

The file rules are the input channel's (steps/readers): files in key order, hidden and `_`-prefixed paths
skipped, the format by extension. The dimension counts the numeric columns, less the id column (the one named,
or else the only non-numeric one); for a CSV that is judged from its first data line.
"""
from __future__ import annotations

import ast
import csv
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

EXTENSIONS = {".npy": "npy", ".parquet": "parquet", ".csv": "csv"}
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


def read_shape(files: Sequence[tuple[str, int]], read: Read, id_column: str | None = None) -> InputShape:
    """The shape of the matrix made of `files` ((key, bytes), keys relative to the input root)."""
    data = sorted((key, size) for key, size in files if not is_skipped(key))
    if not data:
        raise ShapeUnknown("no data files")
    formats = {EXTENSIONS.get(Path(key).suffix.lower()) for key, _ in data}
    if len(formats) != 1 or None in formats:
        raise ShapeUnknown(f"not one format of {', '.join(sorted(EXTENSIONS))} ({data[0][0]}, ...)")
    fmt = formats.pop()
    reader = {"npy": _npy, "parquet": _parquet, "csv": _csv}[fmt]
    rows = read_bytes = 0
    dim, exact, width = None, True, 8
    for key, size in data[:MAX_FILES_READ]:
        try:
            file_rows, file_dim, width, file_exact = reader(key, size, read, id_column)
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


def _npy(key: str, size: int, read: Read, id_column: str | None) -> tuple[int, int, int, bool]:
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


def _parquet(key: str, size: int, read: Read, id_column: str | None) -> tuple[int, int, int, bool]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tail = read(key, -8, 8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ShapeUnknown(f"{key}: not a Parquet file")
    (length,) = struct.unpack("<i", tail[:4])
    footer = read(key, -(8 + length), length + 8)
    metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    schema = metadata.schema.to_arrow_schema()
    numeric = [f for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
               or pa.types.is_boolean(f.type) or pa.types.is_decimal(f.type)]
    features = [f for f in numeric if f.name != id_column and not f.name.startswith("__index_level_")]
    width = max((f.type.bit_width // 8 for f in features if hasattr(f.type, "bit_width") and f.type.bit_width >= 8),
                default=8)
    return metadata.num_rows, len(features), width, True


def _csv(key: str, size: int, read: Read, id_column: str | None) -> tuple[int, int, int, bool]:
    raw = read(key, 0, min(size, CSV_SAMPLE_BYTES))
    whole = len(raw) >= size
    lines = raw.decode("utf-8", "replace").splitlines()
    complete = lines if whole else lines[:-1]  # the last line of a sample may be cut
    if not complete:
        raise ShapeUnknown(f"{key}: no CSV header in its first {CSV_SAMPLE_BYTES} bytes")
    header = next(csv.reader([complete[0]]))
    first = next(csv.reader([complete[1]]), []) if len(complete) > 1 else []
    text = {name for name, value in zip(header, first) if value and not _is_number(value)}
    features = [name for name in header if name != id_column and name not in text]
    if id_column is None and len(text) > 1:
        features = header  # Preprocess will refuse several text columns; the estimate counts them all
    data_lines = [line for line in complete[1:] if line.strip()]
    if whole:
        rows = len(data_lines)
    else:
        body = sum(len(line.encode()) + 1 for line in data_lines)
        rows = round((size - len(complete[0].encode()) - 1) * len(data_lines) / max(body, 1))
    return rows, len(features), 8, whole


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
