"""Similarity checkpoints: a host's finished partial lists and the state of its pass in progress, in the one
prefix every host shares.

SageMaker syncs /opt/ml/checkpoints of every host to one S3 prefix and restores all of it to each host of a
restarted job (spot interruption, retry); the local runner links every host's checkpoints/ to one directory.

Decisions (the container contract, section 2, points here):

- Files. A pass (steps/kernel/blocking.py: block rows [b0, b1) of the grid) writes, every
  ALLPAIRS_CHECKPOINT_SECONDS seconds (default 120; 0 = after every step), at its end, and when the host is
  stopped (SIGTERM: spot's warning, StopTrainingJob):
    lists-<key>-b<b0>-<b1>-<seq>.ckpt   the partial lists finished since the pass's previous checkpoint
    rows-<r0>-<r1>.<key>.ckpt           the state of the pass over rows [r0, r1) (12 digits each; replaced
                                        in place at each checkpoint): its next step, its own rows' candidate
                                        heaps (or "done"), and
                                        the names of every lists file of the pass it vouches for; paused
                                        inside a step (a stop), also which of the step's products are done
                                        (the header's `inside`: their count and tile size) and the step's
                                        mirror heaps
  `key` = the first 16 hex digits of sha256(format, version, the normalized input's fingerprint, k, min_score,
  the grid, the heap width). The host, the InstanceCount and the block size of the score tiles are NOT in it
  (a state paused inside a step resumes only with its own tile size, which the same instance type gives; with
  another, that pass starts again).
- Reuse. A restart with the same InstanceCount has the same passes: each resumes from its latest state (the
  lists it vouches are kept, later ones are dropped), bit for bit as if never stopped. A restart with another
  InstanceCount has other passes: every pass that had finished (a state "done") is reused whole, its block
  rows are not computed again, and the rest is recomputed (an unfinished pass's heaps belong to its own plan).
- Trust nothing. Each file starts with a header (format, the full fingerprint, k, min_score, grid, width,
  byte counts, sha256 of the payload); a file whose header does not match this run is ignored and logged,
  never mixed in; a torn or altered one is discarded, logged and deleted. Files are written with
  steps.io.atomic_path (temp file + rename): a killed writer leaves a hidden `.rows-....tmp` or
  `.lists-....tmp` (and the state before it intact), deleted by the host whose pass it names (the passes of
  one job are disjoint).
- Volume. Lists are written once each; a pass's state is rewritten at each checkpoint: at most the pass's
  heaps, which the memory budget bounds.

Fault injection (local runner only, steps/faults.py) hooks into the state writes: killed right after the Nth
checkpoint, or halfway through writing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..contract import CHECKPOINT_FORMAT, CHECKPOINT_SECONDS_ENV, DEFAULT_CHECKPOINT_SECONDS
from ..errors import StepError
from ..faults import Fault
from ..io import atomic_path, sha256_text

FORMAT, VERSION = CHECKPOINT_FORMAT
MAGIC = b"ALLPAIRS-CHECKPOINT 2\n"
_LISTS = re.compile(r"lists-([0-9a-f]{16})-b(\d+)-(\d+)-(\d{6})\.ckpt")
_STATE = re.compile(r"rows-(\d{12})-(\d{12})\.([0-9a-f]{16})\.ckpt")
_TEMP = re.compile(r"\.(?:lists-[0-9a-f]{16}-b(\d+)-(\d+)-\d{6}|rows-(\d{12})-(\d{12})\.[0-9a-f]{16})\.ckpt\..*\.tmp")
_SLICE_ROWS = 65536  # rows handled per slice: bounds memory whatever the file's size

Log = Callable[[str], None]


def checkpoint_key(fingerprint: str, k: int, min_score: float | None, grid: dict, width: int) -> str:
    return sha256_text(FORMAT, str(VERSION), fingerprint, str(k), json.dumps(min_score), json.dumps(grid, sort_keys=True),
                       str(width))[:16]


def lists_name(key: str, blocks: range, seq: int) -> str:
    return f"lists-{key}-b{blocks.start}-{blocks.stop}-{seq:06d}.ckpt"


def state_name(key: str, grid: dict, blocks: range) -> str:
    """Named by the pass's rows, so the file says which rows' work it holds."""
    r0, r1 = blocks.start * grid["block"], min(grid["rows"], blocks.stop * grid["block"])
    return f"rows-{r0:012d}-{r1:012d}.{key}.ckpt"


def _pass_of_rows(grid: dict, r0: int, r1: int) -> tuple[int, int]:
    return r0 // grid["block"], -(-r1 // grid["block"])


def progress_text(next_step: int, steps: int, done: np.ndarray | None = None) -> str:
    """How far a pass got: '2 of 9 steps done' (', and 37 of 130 products of the next' when paused inside one)."""
    inside = "" if done is None else f", and {int(done.sum())} of {len(done)} products of the next"
    return f"{next_step} of {steps} steps done{inside}"


def read_interval() -> float:
    raw = os.environ.get(CHECKPOINT_SECONDS_ENV, "")
    try:
        value = float(raw) if raw.strip() else float(DEFAULT_CHECKPOINT_SECONDS)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise StepError(f"{CHECKPOINT_SECONDS_ENV}={raw!r}: must be a number of seconds >= 0 (0 checkpoints after "
                        "every step)")
    return value


@dataclass(frozen=True)
class StoredList:
    """A partial list in a lists file: the exact top-k of rows [start, stop) among the column blocks listed."""

    path: Path
    start: int
    stop: int
    columns: tuple[int, ...]
    offset: int  # its first row among the file's rows
    rows_in_file: int
    k: int
    payload: int  # where the payload starts

    def arrays(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [lo, hi) of the list (relative to its start), read from disk."""
        with open(self.path, "rb") as f:
            n = hi - lo
            f.seek(self.payload + (self.offset + lo) * self.k * 8)
            nb = np.fromfile(f, dtype="<i8", count=n * self.k).reshape(n, self.k)
            f.seek(self.payload + self.rows_in_file * self.k * 8 + (self.offset + lo) * self.k * 4)
            sc = np.fromfile(f, dtype="<f4", count=n * self.k).reshape(n, self.k)
        return nb.astype(np.int64), sc.astype(np.float32)


@dataclass
class PassRecord:
    """What the checkpoints hold of one pass: its latest valid state and the lists it vouches for."""

    blocks: range
    seq: int
    next_step: int
    steps: int
    done: bool
    lists: list[StoredList]
    state_path: Path
    payload: int  # where the state's payload starts
    rows: int
    width: int
    inside: dict | None  # paused inside a step: {"products": n, "mirror_rows": m, "tile": t}

    def snapshot(self) -> dict:
        """The fields of the pass's snapshot (steps/kernel/blocking.py Snapshot), read from the state file."""
        with open(self.state_path, "rb") as f:
            f.seek(self.payload)
            keys = np.fromfile(f, dtype="<u8", count=self.rows * self.width).reshape(self.rows, self.width)
            if self.inside is None:
                return {"next_step": self.next_step, "keys": keys.astype(np.uint64)}
            m = int(self.inside["mirror_rows"])
            mirror = np.fromfile(f, dtype="<u8", count=m * self.width).reshape(m, self.width).astype(np.uint64)
            done = np.fromfile(f, dtype=np.uint8, count=int(self.inside["products"])).astype(bool)
        return {"next_step": self.next_step, "keys": keys.astype(np.uint64), "done": done,
                "mirror_keys": mirror if m else None, "tile": int(self.inside["tile"])}


def _read_header(path: Path, expected: dict) -> tuple[dict, int]:
    """(header, payload offset); ValueError (the reason) unless the header matches and the payload checks out."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a checkpoint file of this version (bad magic)")
        try:
            header = json.loads(f.readline(1 << 24))
        except ValueError:
            raise ValueError("unreadable header")
        offset = f.tell()
        for name, value in expected.items():
            if header.get(name) != value:
                raise ValueError(f"header {name}={header.get(name)!r}, expected {value!r}")
        size = os.fstat(f.fileno()).st_size - offset
        if header.get("payload_bytes") != size:
            raise ValueError(f"{size} payload bytes, the header says {header.get('payload_bytes')}")
        digest = hashlib.sha256()
        while block := f.read(1 << 20):
            digest.update(block)
        if digest.hexdigest() != header.get("sha256"):
            raise ValueError("payload checksum differs from the header")
    return header, offset


@dataclass
class Store:
    """The checkpoints of one run (one key) in the shared directory, for the passes of one host."""

    directory: Path
    key: str
    expected: dict  # header fields every file must carry: format, version, fingerprint, k, min_score, grid, width
    log: Log
    fault: Fault | None = None
    rows_label: str = "block rows"  # what a pass's range counts, in log lines (queries mode: "query rows")
    states_written: int = field(default=0, init=False)

    # ---- reading -------------------------------------------------------------------------------------------

    def scan(self, own_passes: list[range]) -> dict[tuple[int, int], PassRecord]:
        """The latest valid state of every pass in the directory (any plan), by (b0, b1). Temp files of this
        host's passes are removed (their writer was killed); files of other runs are ignored and said so."""
        records: dict[tuple[int, int], PassRecord] = {}
        if not self.directory.is_dir():
            return records
        mine = {(p.start, p.stop) for p in own_passes}
        foreign, states = set(), []
        grid = self.expected["grid"]
        for path in sorted(self.directory.iterdir()):
            temp = _TEMP.fullmatch(path.name)
            if temp:
                blocks = (int(temp[1]), int(temp[2])) if temp[1] else _pass_of_rows(grid, int(temp[3]), int(temp[4]))
                if blocks in mine:
                    self.log(f"discarding partial checkpoint write {path.name} (its writer was killed)")
                    path.unlink(missing_ok=True)
                continue
            lists, state = _LISTS.fullmatch(path.name), _STATE.fullmatch(path.name)
            key = lists[1] if lists else state[3] if state else None
            if key is None or not path.is_file():
                continue
            if key != self.key:
                foreign.add(key)
            elif state:
                states.append((_pass_of_rows(grid, int(state[1]), int(state[2])), path))
        if foreign:
            self.log(f"ignoring checkpoint files in {self.directory} computed from other input or parameters "
                     f"(key {', '.join(sorted(foreign))}; this run's is {self.key}): they are not mixed in")
        for (b0, b1), path in states:
            record = self._record(range(b0, b1), path)
            if record is not None:
                records[(b0, b1)] = record
        return records

    def _record(self, blocks: range, path: Path) -> PassRecord | None:
        try:
            header, offset = _read_header(path, {**self.expected, "kind": "state", "pass": [blocks.start, blocks.stop]})
            lists = [item for name in header["lists_files"] for item in self._lists(self.directory / name)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log(f"discarding checkpoint {path.name}: {exc} (torn, altered or incomplete); that pass starts "
                     "again")
            path.unlink(missing_ok=True)
            return None
        return PassRecord(blocks, int(header["seq"]), int(header["next_step"]), int(header["steps"]),
                          bool(header["done"]), lists, path, offset, int(header["rows"]), int(header["width"]),
                          header.get("inside"))

    def _lists(self, path: Path) -> list[StoredList]:
        header, offset = _read_header(path, {**self.expected, "kind": "lists"})
        rows, k = int(header["rows"]), int(header["k"])
        out, at = [], 0
        for item in header["lists"]:
            n = int(item["stop"]) - int(item["start"])
            out.append(StoredList(path, int(item["start"]), int(item["stop"]), tuple(item["columns"]), at, rows, k,
                                  offset))
            at += n
        if at != rows:
            raise ValueError(f"{path.name}: lists hold {at} rows, the header says {rows}")
        return out

    # ---- writing -------------------------------------------------------------------------------------------

    def write_lists(self, blocks: range, seq: int, lists: list) -> str:
        """A lists file with `lists` (PartialList-like: start, stop, columns, neighbors, scores)."""
        name = lists_name(self.key, blocks, seq)
        rows = sum(p.stop - p.start for p in lists)
        k = self.expected["k"]
        parts = [np.ascontiguousarray(p.neighbors, "<i8").tobytes() for p in lists] + \
                [np.ascontiguousarray(p.scores, "<f4").tobytes() for p in lists]
        header = {**self.expected, "kind": "lists", "pass": [blocks.start, blocks.stop], "seq": seq, "rows": rows,
                  "k": k, "lists": [{"start": p.start, "stop": p.stop, "columns": list(p.columns)} for p in lists]}
        self._write(name, header, parts)
        return name

    def write_state(self, blocks: range, seq: int, steps: int, snapshot, lists_files: list[str]) -> str:
        """The pass's state (replacing its previous one): its snapshot (a steps/kernel/blocking.py Snapshot),
        or None once it is done."""
        name = state_name(self.key, self.expected["grid"], blocks)
        width = self.expected["width"]
        parts, inside = [], None
        if snapshot is not None:
            parts.append(np.ascontiguousarray(snapshot.keys, "<u8").tobytes())
            if snapshot.done is not None:
                mirror = np.zeros((0, width), "<u8") if snapshot.mirror_keys is None else snapshot.mirror_keys
                parts += [np.ascontiguousarray(mirror, "<u8").tobytes(), snapshot.done.astype(np.uint8).tobytes()]
                inside = {"products": len(snapshot.done), "mirror_rows": len(mirror), "tile": snapshot.tile}
        header = {**self.expected, "kind": "state", "pass": [blocks.start, blocks.stop], "seq": seq,
                  "next_step": steps if snapshot is None else snapshot.next_step, "steps": steps,
                  "done": snapshot is None, "rows": 0 if snapshot is None else len(snapshot.keys), "inside": inside,
                  "lists_files": lists_files}
        tearing = self.fault is not None
        self._write(name, header, parts or [b""], tear_at=self.states_written + 1 if tearing else None)
        self.states_written += 1
        where = "done" if snapshot is None else progress_text(snapshot.next_step, steps, snapshot.done)
        what = f"pass of {self.rows_label} [{blocks.start}, {blocks.stop}): {where}"
        self.log(f"checkpoint: {what}")
        if self.fault:
            self.fault.after_checkpoint(self.states_written, what, self.log)
        return name

    def _write(self, name: str, header: dict, parts: list[bytes], tear_at: int | None = None) -> None:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        header = {**header, "payload_bytes": sum(len(p) for p in parts), "sha256": digest.hexdigest()}
        with atomic_path(self.directory / name) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
            for i, part in enumerate(parts):
                if tear_at is not None and i == len(parts) - 1:  # half written: the last part is not in
                    f.flush()
                    self.fault.during_checkpoint(tear_at, name, self.log)
                f.write(part)


def read_list_rows(item: StoredList, batch_rows: int = _SLICE_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A stored list's rows in slices: memory holds one slice."""
    n = item.stop - item.start
    for lo in range(0, n, batch_rows):
        yield item.arrays(lo, min(n, lo + batch_rows))
