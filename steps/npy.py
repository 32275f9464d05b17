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


def read_header(path: Path) -> NpyHeader:
    """The header of a .npy file (raises ValueError/EOFError/OSError on a file that is not one)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(f)
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
