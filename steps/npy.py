"""Streaming .npy files with plain file I/O: read row slices, write rows in order.

A memory map would be simpler, but every page it touches counts in the process's memory until unmapped, so a
step reading or writing N x k values that way holds O(N*k). With reads and appends a step holds the slice it
works on, whatever the file's size.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import atomic_path


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int  # where the data starts


MAX_HEADER_BYTES = 10000  # numpy's own limit for a header it parses safely (max_header_size)


def read_header(path: Path) -> NpyHeader:
    """The header of a .npy file; ValueError/EOFError/OSError, with the reason, on a file that is not one or
    whose header cannot be trusted (too long to read, unparseable, a negative dimension). The shape is not
    checked against the file's size: the caller knows what it needs."""
    with open(path, "rb") as f:
        major, minor = np.lib.format.read_magic(f)
        if major not in (1, 2, 3):
            raise ValueError(f"unknown .npy format version {major}.{minor}")
        size = 2 if major == 1 else 4
        announced = f.read(size)
        if len(announced) != size:
            raise EOFError("the file ends inside its header")
        length = int.from_bytes(announced, "little")
        if length > MAX_HEADER_BYTES:  # checked before numpy reads (and allocates) that many bytes
            raise ValueError(f"its header claims {length} bytes; a .npy header holds at most {MAX_HEADER_BYTES}")
        f.seek(-size, 1)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        try:
            shape, fortran_order, dtype = read(f)
        except (SyntaxError, RecursionError, MemoryError, TypeError, OverflowError) as exc:
            raise ValueError(f"its header cannot be parsed ({type(exc).__name__})") from None
        if any(n < 0 for n in shape):
            raise ValueError(f"its header says shape {tuple(shape)}: a negative dimension")
        return NpyHeader(tuple(shape), bool(fortran_order), np.dtype(dtype), f.tell())


def read_rows(path: Path, start: int, stop: int, header: NpyHeader | None = None) -> np.ndarray:
    """Rows [start, stop) of a C-ordered 2-D .npy file, read from disk (no memory map)."""
    header = header or read_header(path)
    if header.fortran_order:  # rare: a column-major file has no contiguous rows to read; map it instead
        return np.array(np.load(path, mmap_mode="r")[start:stop])
    cols = header.shape[1] if len(header.shape) > 1 else 1
    stop = min(stop, header.shape[0])
    count = max(stop - start, 0) * cols
    with open(path, "rb") as f:
        f.seek(header.offset + start * cols * header.dtype.itemsize)
        data = np.fromfile(f, dtype=header.dtype, count=count)
    if data.size != count:
        raise EOFError(f"{path}: expected {count} values from row {start}, read {data.size} (file truncated)")
    return data.reshape(stop - start, cols) if len(header.shape) > 1 else data


class RowWriter:
    """Appends rows to an open .npy file whose header announced `shape`."""

    def __init__(self, file, dtype: np.dtype, shape: tuple[int, int], name: str):
        self.file, self.dtype, self.shape, self.name = file, dtype, shape, name
        self.written = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.name}: rows of shape {rows.shape} do not fit {self.shape} after {self.written} rows")
        self.file.write(rows.tobytes())
        self.written += len(rows)


@contextlib.contextmanager
def row_writer(path: Path, dtype, shape: tuple[int, int]) -> Iterator[RowWriter]:
    """Write a (rows, cols) .npy file in row order; it appears under its name only complete (temp + rename)."""
    dtype = np.dtype(dtype)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_2_0(f, header)
        writer = RowWriter(f, dtype, tuple(shape), Path(path).name)
        yield writer
        if writer.written != shape[0]:
            raise ValueError(f"{writer.name}: {writer.written} rows written, {shape[0]} expected")
