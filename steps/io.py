"""Atomic writes and hashing: a crash never leaves a half-written file that a later step would trust."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds.

    The file's mode follows the umask, as open() would make it (0666 & ~umask): mkstemp's 0600 would leave
    a team folder or a shared mount unable to read what a step wrote."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_new(dest)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        if exc.filename is None and exc.errno:  # a write's error names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(dest)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_new(dest: Path) -> str:
    """Create an empty, not yet existing file beside `dest` (O_EXCL: never another writer's), mode 0666 & ~umask."""
    while True:
        tmp = str(dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        Path(tmp).write_bytes(data)


def write_json(dest: Path, obj) -> None:
    write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npy(dest: Path, array: np.ndarray) -> None:
    """np.save's bytes, written by Python's file object: a short write (a full disk) raises OSError with its
    errno and path, where numpy's tofile says only "N requested and M written"."""
    array = np.ascontiguousarray(array)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
            f.write(array.data)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(bufsize):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()
