"""Similarity checkpoints: completed query rows, keyed by row range, in the one prefix every host shares.

SageMaker syncs /opt/ml/checkpoints of every host to one S3 prefix and restores all of it to each host of a
restarted job (spot interruption, retry); the local runner links every host's checkpoints/ to one directory.

Decisions (the container contract, section 2, points here):

- Key. A file holds the final top-k of rows [start, stop): `rows-<start>-<stop>.<key>.ckpt`, 12-digit
  zero-padded rows, `key` = the first 16 hex digits of sha256(format, the normalized input's fingerprint, k,
  min_score). The host name, the row split (InstanceCount) and the block size are deliberately NOT in the key:
  the kernel's result for a row depends only on the matrix, the row, k and min_score (canonical float64
  scoring; bit-identical for any block size, thread count or host split, as tests/test_kernel.py checks),
  so a completed row range is valid for any host whose share overlaps it. A job restarted with another
  InstanceCount (capacity came back smaller) reuses all completed rows instead of starting over.
- Trust nothing. Each file starts with a header (format, the full fingerprint, k, min_score, rows, byte
  counts, sha256 of the payload); a file whose header does not match this run exactly is ignored and logged,
  never mixed in, and one whose payload length or checksum is wrong (torn or altered) is discarded, logged and
  deleted. Files are written with steps.io.atomic_path (temp file + rename), so a killed writer leaves only
  a hidden `.rows-....tmp` file: the host whose share holds that range deletes it and logs it. A host never
  deletes another live host's temp file: shares of one job are disjoint.
- Volume. A host keeps completed rows in its shard's memory map and writes them as one checkpoint at most
  every ALLPAIRS_CHECKPOINT_SECONDS seconds (default 120; 0 = after every kernel block), at the end of each
  computed range, and when stopped by SIGTERM (spot's two-minute warning, StopTrainingJob). Bytes written
  equal the shard's size (each row once, never rewritten); files number about runtime / interval per host.
  At most the last interval's work is lost to a hard kill.
- Resume. A host covers its share with verified checkpoints first (the one reaching furthest at each row),
  and computes only the gaps. The shard is then bit-identical to an uninterrupted run.

Fault injection (local runner only, steps/faults.py) hooks into the writer: killed right after the Nth
checkpoint write, or halfway through it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import CHECKPOINT_FORMAT, CHECKPOINT_SECONDS_ENV, DEFAULT_CHECKPOINT_SECONDS
from ..errors import StepError
from ..faults import Fault
from ..io import atomic_path, sha256_text

FORMAT, VERSION = CHECKPOINT_FORMAT
MAGIC = b"ALLPAIRS-CHECKPOINT 1\n"
_NAME = re.compile(r"rows-(\d{12})-(\d{12})\.([0-9a-f]{16})\.ckpt")
_TEMP = re.compile(r"\.rows-(\d{12})-(\d{12})\.[0-9a-f]{16}\.ckpt\..*\.tmp")
_COPY_ROWS = 65536  # rows copied per slice: bounds memory whatever the checkpoint size

Log = Callable[[str], None]


def checkpoint_key(fingerprint: str, k: int, min_score: float | None) -> str:
    return sha256_text(FORMAT, str(VERSION), fingerprint, str(k), json.dumps(min_score))[:16]


def file_name(start: int, stop: int, key: str) -> str:
    return f"rows-{start:012d}-{stop:012d}.{key}.ckpt"


def read_interval() -> float:
    raw = os.environ.get(CHECKPOINT_SECONDS_ENV, "")
    try:
        value = float(raw) if raw.strip() else float(DEFAULT_CHECKPOINT_SECONDS)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise StepError(f"{CHECKPOINT_SECONDS_ENV}={raw!r}: must be a number of seconds >= 0 (0 checkpoints after "
                        "every tile)")
    return value


# ---- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    start: int
    stop: int
    offset: int  # where the payload starts
    k: int

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.stop - self.start
        nb = np.memmap(self.path, dtype="<i8", mode="r", offset=self.offset, shape=(rows, self.k))
        sc = np.memmap(self.path, dtype="<f4", mode="r", offset=self.offset + rows * self.k * 8, shape=(rows, self.k))
        return nb, sc


def verify(path: Path, expected: dict) -> Checkpoint:
    """Open one checkpoint file; ValueError (the reason) unless header, length and checksum all match."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a checkpoint file (bad magic)")
        line = f.readline(1 << 16)
        try:
            header = json.loads(line)
        except ValueError:
            raise ValueError("unreadable header")
        offset = f.tell()
        for key, value in expected.items():
            if header.get(key) != value:
                raise ValueError(f"header {key}={header.get(key)!r}, expected {value!r}")
        start, stop, k = int(header["start"]), int(header["stop"]), int(header["k"])
        size = (stop - start) * k * 12
        if header.get("payload_bytes") != size or os.fstat(f.fileno()).st_size != offset + size:
            raise ValueError(f"{os.fstat(f.fileno()).st_size - offset} payload bytes, the header says {size}")
        digest = hashlib.sha256()
        while block := f.read(1 << 20):
            digest.update(block)
        if digest.hexdigest() != header.get("sha256"):
            raise ValueError("payload checksum differs from the header")
    return Checkpoint(path, start, stop, offset, k)


@dataclass
class Scan:
    usable: list[Checkpoint] = field(default_factory=list)
    foreign: int = 0


def scan(directory: Path, key: str, expected: dict, share: tuple[int, int], log: Log) -> Scan:
    """Verified checkpoints of this run overlapping `share`; everything else is logged (and removed if torn)."""
    found = Scan()
    if not directory.is_dir():
        return found
    start, stop = share
    foreign_keys = set()
    for path in sorted(directory.iterdir()):
        temp = _TEMP.fullmatch(path.name)
        if temp and start <= int(temp[1]) and int(temp[2]) <= stop:  # ours: no live host writes this range
            log(f"discarding partial checkpoint write {path.name} (its writer was killed); those rows are computed again")
            path.unlink(missing_ok=True)
            continue
        name = _NAME.fullmatch(path.name)
        if not name:
            continue
        if name[3] != key:
            found.foreign += 1
            foreign_keys.add(name[3])
            continue
        lo, hi = int(name[1]), int(name[2])
        if hi <= start or lo >= stop:
            continue  # another host's rows: it verifies them itself
        try:
            checkpoint = verify(path, {**expected, "start": lo, "stop": hi})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"discarding checkpoint {path.name}: {exc} (torn or altered); those rows are computed again")
            path.unlink(missing_ok=True)
            continue
        found.usable.append(checkpoint)
    if found.foreign:
        log(f"ignoring {found.foreign} checkpoint file(s) in {directory} computed from other input or parameters "
            f"(key {', '.join(sorted(foreign_keys))}; this run's is {key}): they are not mixed in")
    return found


def plan_cover(share: tuple[int, int], usable: list[Checkpoint]) -> list[tuple[int, int, Checkpoint | None]]:
    """Split `share` into pieces: (start, stop, checkpoint to copy from) or (start, stop, None) to compute.
    At each row the checkpoint reaching furthest wins; gaps end where the next checkpoint begins."""
    pos, stop = share
    pieces: list[tuple[int, int, Checkpoint | None]] = []
    while pos < stop:
        covering = [c for c in usable if c.start <= pos < c.stop]
        if covering:
            best = max(covering, key=lambda c: c.stop)
            end = min(best.stop, stop)
            pieces.append((pos, end, best))
        else:
            end = min([c.start for c in usable if pos < c.start < stop], default=stop)
            pieces.append((pos, end, None))
        pos = end
    return pieces


def copy_rows(checkpoint: Checkpoint, lo: int, hi: int, neighbors: np.ndarray, scores: np.ndarray, base: int) -> None:
    """Rows [lo, hi) of a checkpoint into the shard arrays (whose row 0 is global row `base`)."""
    nb, sc = checkpoint.arrays()
    for a in range(lo, hi, _COPY_ROWS):
        b = min(hi, a + _COPY_ROWS)
        neighbors[a - base: b - base] = nb[a - checkpoint.start: b - checkpoint.start]
        scores[a - base: b - base] = sc[a - checkpoint.start: b - checkpoint.start]
    del nb, sc


# ---- writing ----------------------------------------------------------------------------------------------


class Writer:
    """Saves completed rows [saved, done) from the shard arrays as one checkpoint when due."""

    def __init__(self, directory: Path, key: str, header: dict, neighbors: np.ndarray, scores: np.ndarray,
                 base: int, interval: float, log: Log, fault: Fault | None = None):
        self.directory, self.key, self.header = directory, key, header
        self.neighbors, self.scores, self.base = neighbors, scores, base
        self.interval, self.log, self.fault = interval, log, fault
        self.saved = self.done = None  # the pending range, once rows arrive
        self.last = time.monotonic()
        self.files = 0
        self.rows_saved = 0  # rows of this host's share now in checkpoints (written by this process)

    def completed(self, first: int, stop: int) -> None:
        """Rows [first, stop) are final in the shard arrays; save if the interval has passed."""
        if self.done != first:
            self.save()
            self.saved = first
        self.done = stop
        if time.monotonic() - self.last >= self.interval:
            self.save()

    def save(self) -> None:
        if self.saved is None or self.saved == self.done:
            return
        start, stop = self.saved, self.done
        self._write(start, stop)
        self.saved, self.last = stop, time.monotonic()
        self.files += 1
        self.rows_saved += stop - start
        self.log(f"checkpoint rows [{start}, {stop}) saved: {file_name(start, stop, self.key)}")
        if self.fault:
            self.fault.after_checkpoint(self.files, f"rows [{start}, {stop})", self.log)

    def _write(self, start: int, stop: int) -> None:
        lo, hi = start - self.base, stop - self.base
        k = self.neighbors.shape[1]
        digest = hashlib.sha256()
        for _, part in self._payload(lo, hi):
            digest.update(part)
        header = {**self.header, "start": start, "stop": stop, "k": k, "payload_bytes": (hi - lo) * k * 12,
                  "sha256": digest.hexdigest()}
        with atomic_path(self.directory / file_name(start, stop, self.key)) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
            for kind, part in self._payload(lo, hi):
                if self.fault and kind == "scores":  # half written: neighbours are in, scores are not
                    f.flush()
                    self.fault.during_checkpoint(self.files + 1, f"rows [{start}, {stop})", self.log)
                f.write(part)

    def _payload(self, lo: int, hi: int):
        """The neighbours (int64 LE) then the scores (float32 LE) of shard rows [lo, hi), in slices."""
        for kind, array, dtype in (("neighbors", self.neighbors, "<i8"), ("scores", self.scores, "<f4")):
            for a in range(lo, hi, _COPY_ROWS):
                yield kind, np.ascontiguousarray(array[a: min(hi, a + _COPY_ROWS)], dtype=dtype).tobytes()
