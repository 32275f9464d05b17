"""Similarity's output, one shard per host: written by each host into /opt/ml/model, read by Merge.

    shard-<host>.neighbors.npy   int64 (L, k): the rows of the host's partial lists, one after the other
    shard-<host>.scores.npy      float32 (L, k): their canonical scores, NaN where padded
    shard-<host>.json            written last: format, host, hosts, the grid, k (and top_k, the TopK asked),
                                 min_score, the input fingerprint, the training job, each list (its rows
                                 [start, stop), the column blocks it covers, its offset in the files), each
                                 file's sha256, timings

A partial list holds the exact top-k of its rows among the corpus rows of its column blocks
(steps/kernel/blocking.py). A row's lists come from several hosts (and from checkpoints of earlier attempts):
together they must cover every column block exactly once; their combination is then the row's exact top-k.

File names are host-unique: SageMaker gathers every host's /opt/ml/model into one prefix and keeps one of two
same-named files. Reading trusts nothing: each shard's metadata, checksums, shapes and input fingerprint are
checked, all shards must come from one training job and name hosts of that job, and coverage is checked block
by block before anything is written.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import npy
from ..contract import SHARD_FORMAT
from ..errors import StepError
from ..io import sha256_file, write_json

FORMAT, VERSION = SHARD_FORMAT


def names(host: str) -> dict[str, str]:
    stem = f"shard-{host}"
    return {"neighbors": f"{stem}.neighbors.npy", "scores": f"{stem}.scores.npy", "meta": f"{stem}.json"}


# ---- writing -------------------------------------------------------------------------------------------------


class ShardWriter:
    """Appends partial lists to a host's two .npy files (their total rows known up front), then vouches for
    them with the JSON (`finish`); nothing appears under its name incomplete."""

    def __init__(self, out_dir: Path, host: str, rows: int, k: int, stack: contextlib.ExitStack):
        self.out_dir, self.host, self.k = out_dir, host, k
        files = names(host)
        self._nb = stack.enter_context(npy.row_writer(out_dir / files["neighbors"], np.int64, (rows, k)))
        self._sc = stack.enter_context(npy.row_writer(out_dir / files["scores"], np.float32, (rows, k)))
        self.lists: list[dict] = []
        self.rows = 0

    def add(self, start: int, stop: int, columns, rows: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        """One list: its rows arrive as (neighbors, scores) slices, in order."""
        offset = self.rows
        for nb, sc in rows:
            self._nb.write(nb)
            self._sc.write(sc)
            self.rows += len(nb)
        if self.rows - offset != stop - start:
            raise ValueError(f"list [{start}, {stop}): {self.rows - offset} rows written")
        self.lists.append({"start": start, "stop": stop, "columns": sorted(int(c) for c in columns), "offset": offset})


def write_meta(out_dir: Path, writer: ShardWriter, hosts: list[str], grid: dict, min_score, fingerprint: str,
               job: str | None, resumed_steps: int, seconds: float, cpu_seconds: float,
               top_k: int | None = None, kernel: str = "dense", extra: dict | None = None) -> dict:
    """The JSON that vouches for a host's two .npy files (written after they are complete). `k` is their width;
    `top_k` the TopK asked, when more than any row can have (k was then lowered to that); `kernel` the product
    kernel that ran (steps/kernel/sparse.py: "dense" or "sparse"); `extra`: more keys (queries mode: the mode,
    the query files the host received, their fingerprint)."""
    files = names(writer.host)
    meta = {
        "format": FORMAT, "version": VERSION, "host": writer.host, "hosts": hosts, "grid": grid, "k": writer.k,
        "top_k": writer.k if top_k is None else top_k,
        "min_score": min_score, "input_fingerprint": fingerprint, "job": job, "lists": writer.lists,
        "rows": writer.rows, "resumed_steps": resumed_steps,
        "files": {files[kind]: sha256_file(out_dir / files[kind]) for kind in ("neighbors", "scores")},
        "seconds": seconds, "cpu_seconds": cpu_seconds, "kernel": kernel, **(extra or {}),
    }
    write_json(out_dir / files["meta"], meta)
    return meta


# ---- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    meta_path: Path
    meta: dict
    headers: dict = field(default_factory=dict, compare=False)

    @property
    def host(self) -> str:
        return self.meta["host"]

    def path(self, kind: str) -> Path:
        return self.meta_path.parent / names(self.meta["host"])[kind]

    def header(self, kind: str) -> npy.NpyHeader:
        """Read once per file (the dict is the one mutable part of this frozen record)."""
        if kind not in self.headers:
            try:
                self.headers[kind] = npy.read_header(self.path(kind))
            except (ValueError, EOFError, OSError) as exc:
                raise StepError(f"{self.path(kind)}: not a readable .npy file ({exc}); rerun the Similarity step")
        return self.headers[kind]

    def rows(self, kind: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the shard's files, read from disk: memory holds one batch."""
        return npy.read_rows(self.path(kind), lo, hi, self.header(kind))


@dataclass(frozen=True)
class ListRef:
    """One partial list of one shard."""

    shard: Shard
    start: int
    stop: int
    columns: tuple[int, ...]
    offset: int


def unpack_shards(shards_dir: Path, scratch: Path) -> Path:
    """The training output arrives uncompressed (CompressionType NONE) or as model.tar.gz (GZIP)."""
    archives = sorted(shards_dir.rglob("model.tar.gz"))
    if not archives:
        return shards_dir
    target = scratch / "shards"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for archive in archives:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise StepError(f"{archive}: cannot unpack the training output ({exc}); rerun the Similarity step")
    return target


@dataclass(frozen=True)
class Shards:
    """Every shard of one training job, checked, and their lists by row block."""

    shards: list[Shard]
    grid: dict
    k: int  # the lists' width
    top_k: int  # the TopK asked (more than k when no row could have that many)
    min_score: float | None
    by_block: dict[int, list[ListRef]]

    def batches(self, batch_rows: int, combine) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, neighbors, scores) of every row in order, each row's lists combined by
        `combine(list of (neighbors, scores)) -> (neighbors, scores)`: memory holds one batch of every list."""
        block, rows = self.grid["block"], self.grid["rows"]
        for b in range(self.grid["blocks"]):
            start, stop = b * block, min(rows, (b + 1) * block)
            refs = self.by_block[b]
            for lo in range(start, stop, batch_rows):
                hi = min(stop, lo + batch_rows)
                parts = []
                for ref in refs:
                    a, z = ref.offset + lo - start, ref.offset + hi - start
                    nb, sc = ref.shard.rows("neighbors", a, z), ref.shard.rows("scores", a, z)
                    if ((nb < -1) | (nb >= rows)).any():
                        raise StepError(f"{ref.shard.meta_path}: neighbour index out of range near row {lo}; "
                                        "rerun the Similarity step")
                    parts.append((nb, sc))
                nb, sc = combine(parts)
                yield lo, nb, sc


def _checked_shards(shards_dir: Path, fingerprint: str) -> list:
    """Every shard-<host>.json under `shards_dir`, each checked against its files and the input, all of one job."""
    metas = sorted(shards_dir.rglob("shard-*.json"))
    if not metas:
        raise StepError(f"{shards_dir}: no shard-<host>.json files; the Similarity step wrote no output "
                        "(check its logs)")
    shards = [_check_shard(path, fingerprint) for path in metas]
    _check_one_job(shards)
    return shards


def collect_shards(shards_dir: Path, rows: int, fingerprint: str) -> Shards:
    """Every shard checked; together their lists must cover every row's every column block exactly once."""
    shards = _checked_shards(shards_dir, fingerprint)
    ks = {(s.meta["k"], s.meta.get("top_k", s.meta["k"])) for s in shards}
    thresholds = {s.meta["min_score"] for s in shards}
    host_lists = {tuple(s.meta["hosts"]) for s in shards}
    grids = {json.dumps(s.meta["grid"], sort_keys=True) for s in shards}
    if len(ks) > 1 or len(thresholds) > 1 or len(host_lists) > 1 or len(grids) > 1:
        raise StepError(f"{shards_dir}: shards disagree on k {sorted(k for k, _ in ks)}, threshold, grid or host "
                        "list: they come from different training jobs; rerun the Similarity step into an empty output")
    hosts = list(host_lists.pop())
    seen: dict[str, Shard] = {}
    for shard in shards:
        host = shard.host
        if host not in hosts:
            raise StepError(f"{shard.meta_path}: host {host} is not one of the job's hosts ({', '.join(hosts)}); "
                            "it belongs to another job: remove it or rerun the Similarity step")
        if host in seen:
            raise StepError(f"host {host} has two shards: {seen[host].meta_path} and {shard.meta_path}; "
                            "remove the stale one or rerun the Similarity step")
        seen[host] = shard
    missing = [h for h in hosts if h not in seen]
    if missing:
        raise StepError(f"{shards_dir}: no shard from host {', '.join(missing)} of {len(hosts)} hosts; "
                        "rerun the Similarity step (a host failed or its output was lost)")
    grid = json.loads(grids.pop())
    if grid.get("rows") != rows:
        raise StepError(f"{shards_dir}: shards cover a grid of {grid.get('rows')} rows but the matrix has {rows}; "
                        "rerun the Similarity step")
    k, top_k = ks.pop()
    return Shards(shards, grid, k, top_k, thresholds.pop(), _coverage(shards, grid))


def _coverage(shards: list[Shard], grid: dict) -> dict[int, list[ListRef]]:
    """Each row block's lists; every column block covered exactly once, or an error naming the block."""
    blocks, block, rows = grid["blocks"], grid["block"], grid["rows"]
    by_block: dict[int, list[ListRef]] = {b: [] for b in range(blocks)}
    for shard in shards:
        for item in shard.meta["lists"]:
            start, stop = int(item["start"]), int(item["stop"])
            b = start // block
            if start != b * block or stop != min(rows, (b + 1) * block) or not 0 <= b < blocks:
                raise StepError(f"{shard.meta_path}: a list of rows [{start}, {stop}) is not a block of the grid; "
                                "rerun the Similarity step")
            by_block[b].append(ListRef(shard, start, stop, tuple(item["columns"]), int(item["offset"])))
    everything = set(range(blocks))
    for b, refs in by_block.items():
        covered = [c for ref in refs for c in ref.columns]
        twice = sorted({c for c in covered if covered.count(c) > 1})
        missing = sorted(everything - set(covered))
        if twice or missing:
            start = b * block
            what = "; ".join(filter(None, (f"column blocks {missing} missing" if missing else "",
                                           f"column blocks {twice} covered twice" if twice else "")))
            raise StepError(f"rows [{start}, {min(rows, start + block)}): {what} among the shards' lists; each "
                            "pair of rows must be covered exactly once: rerun the Similarity step")
    return by_block


def _check_one_job(shards: list[Shard]) -> None:
    """Shards of another training job (another execution, or an earlier attempt) are never mixed in."""
    first = shards[0]
    for shard in shards[1:]:
        if shard.meta.get("job") != first.meta.get("job"):
            raise StepError(f"{shard.meta_path}: written by training job {shard.meta.get('job')!r}, but "
                            f"{first.meta_path.name} by {first.meta.get('job')!r}; shards of different jobs "
                            "(another execution's output?) are never merged: rerun the Similarity step into an "
                            "empty output")


def _check_shard(path: Path, fingerprint: str) -> Shard:
    try:
        meta = json.loads(path.read_text())
        if (meta.get("format"), meta.get("version")) != (FORMAT, VERSION):
            raise ValueError(f"not an {FORMAT} shard, version {VERSION}")
        shard = Shard(path, meta)
        meta["k"], meta["host"], meta["files"], meta["lists"], meta["grid"]["blocks"], meta["rows"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{path}: unreadable shard metadata ({exc}); rerun the Similarity step")
    if meta.get("input_fingerprint") != fingerprint:
        raise StepError(f"{path}: computed from other input (fingerprint {str(meta.get('input_fingerprint'))[:12]}, "
                        f"this run's is {fingerprint[:12]}); it belongs to another execution: remove it")
    for name, digest in meta["files"].items():
        file = path.parent / name
        if not file.exists():
            raise StepError(f"{file}: listed in {path.name} but missing; rerun the Similarity step")
        if sha256_file(file) != digest:
            raise StepError(f"{file}: checksum differs from {path.name} (truncated or altered); "
                            "rerun the Similarity step")
    for kind in ("neighbors", "scores"):
        shape = shard.header(kind).shape
        if shape != (meta["rows"], meta["k"]):
            raise StepError(f"{shard.path(kind)}: shape {shape}, expected ({meta['rows']}, {meta['k']}); "
                            "rerun the Similarity step")
    return shard


# ---- queries mode ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryShards:
    """Every shard of one queries-mode training job, checked: each query row in exactly one list."""

    shards: list[Shard]
    k: int
    top_k: int
    min_score: float | None
    lists: list[ListRef]  # in query row order, covering [0, rows) once
    corpus_rows: int

    def batches(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first query row, neighbors, scores) in row order: memory holds one batch."""
        for ref in self.lists:
            for lo in range(ref.start, ref.stop, batch_rows):
                hi = min(ref.stop, lo + batch_rows)
                a, z = ref.offset + lo - ref.start, ref.offset + hi - ref.start
                nb, sc = ref.shard.rows("neighbors", a, z), ref.shard.rows("scores", a, z)
                if ((nb < -1) | (nb >= self.corpus_rows)).any():
                    raise StepError(f"{ref.shard.meta_path}: neighbour index out of range near query row {lo}; "
                                    "rerun the Similarity step")
                yield lo, nb.astype(np.int64), sc


def collect_query_shards(shards_dir: Path, corpus_rows: int, fingerprint: str, queries: dict) -> QueryShards:
    """Every shard checked (as collect_shards does) and the query chunk files of the queries manifest each
    covered by exactly one host, its rows by that host's lists exactly once; an error names the files."""
    shards = _checked_shards(shards_dir, fingerprint)
    for shard in shards:
        got = shard.meta.get("queries_fingerprint")
        if shard.meta.get("mode") != "queries" or (got is not None and got != queries["fingerprint"]):
            raise StepError(f"{shard.meta_path}: not a shard of these queries (mode {shard.meta.get('mode')!r}, "
                            f"queries fingerprint {str(got)[:12]}, this run's is {queries['fingerprint'][:12]}); "
                            "rerun the Similarity step into an empty output")
    ks = {(s.meta["k"], s.meta.get("top_k", s.meta["k"])) for s in shards}
    thresholds = {s.meta["min_score"] for s in shards}
    host_lists = {tuple(s.meta["hosts"]) for s in shards}
    if len(ks) > 1 or len(thresholds) > 1 or len(host_lists) > 1:
        raise StepError(f"{shards_dir}: shards disagree on k {sorted(k for k, _ in ks)}, threshold or host list: "
                        "they come from different training jobs; rerun the Similarity step into an empty output")
    hosts = list(host_lists.pop())
    names = sorted(s.host for s in shards)
    if names != sorted(hosts):
        missing = [h for h in hosts if h not in names]
        raise StepError(f"{shards_dir}: shards of hosts {', '.join(names)} for the job's hosts {', '.join(hosts)}"
                        f"{' (no shard from ' + ', '.join(missing) + ')' if missing else ''}; rerun the Similarity "
                        "step (a host failed or its output was lost)")
    wanted = {Path(e["file"]).name: e for e in queries["files"]}
    owner: dict[str, list[str]] = {}
    refs: list[ListRef] = []
    for shard in shards:
        for item in shard.meta.get("query_files", []):
            entry = wanted.get(item.get("file"))
            if entry is None or (item.get("start"), item.get("stop"), item.get("sha256")) != \
                    (entry["start"], entry["stop"], entry["sha256"]):
                raise StepError(f"{shard.meta_path}: query chunk file {item.get('file')!r} is not one of the "
                                "queries manifest's (or differs from it): rerun the Preprocess and Similarity steps")
            owner.setdefault(item["file"], []).append(shard.host)
        refs += [ListRef(shard, int(i["start"]), int(i["stop"]), tuple(i["columns"]), int(i["offset"]))
                 for i in shard.meta["lists"]]
    missing = [name for name in wanted if name not in owner]
    twice = {name: hs for name, hs in owner.items() if len(hs) > 1}
    if missing or twice:
        what = "; ".join(filter(None, (
            f"query chunk file(s) {', '.join(missing)} covered by no host" if missing else "",
            "; ".join(f"{name} covered by hosts {', '.join(hs)}" for name, hs in sorted(twice.items())))))
        raise StepError(f"{what}: each query row must be covered exactly once (ShardedByS3Key gives each file to one "
                        "host): rerun the Similarity step")
    refs.sort(key=lambda r: r.start)
    at = 0
    for ref in refs:
        if ref.start != at or ref.stop <= ref.start or ref.columns != (0,):
            raise StepError(f"{ref.shard.meta_path}: its lists do not cover query rows [{at}, ...) exactly once "
                            f"(a list of rows [{ref.start}, {ref.stop})); rerun the Similarity step")
        at = ref.stop
    if at != int(queries["rows"]):
        raise StepError(f"{shards_dir}: the lists cover query rows [0, {at}) of {queries['rows']}; rerun the "
                        "Similarity step")
    k, top_k = ks.pop()
    return QueryShards(shards, k, top_k, thresholds.pop(), refs, corpus_rows)
