"""Similarity's output, one shard per host: written by each host into /opt/ml/model, read by Merge.

    shard-<host>.neighbors.npy   int64 (rows, k): row indices of the neighbours, -1 where padded
    shard-<host>.scores.npy      float32 (rows, k): their canonical scores, NaN where padded
    shard-<host>.json            written last: format, host, hosts, rows [start, stop), k, min_score, the input
                                 fingerprint, the training job, resumed rows, each file's sha256, timings

File names are host-unique: SageMaker gathers every host's /opt/ml/model into one prefix and keeps one of two
same-named files. Reading trusts nothing: each shard's metadata, checksums, shape, row range and input
fingerprint are checked, all shards must come from one training job and name hosts of that job, and together
they must cover every row exactly once.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import npy
from ..contract import SHARD_FORMAT
from ..errors import StepError
from ..io import sha256_file, write_json

FORMAT, VERSION = SHARD_FORMAT


def names(host: str) -> dict[str, str]:
    stem = f"shard-{host}"
    return {"neighbors": f"{stem}.neighbors.npy", "scores": f"{stem}.scores.npy", "meta": f"{stem}.json"}


def write_meta(out_dir: Path, host: str, hosts: list[str], start: int, stop: int, k: int, min_score,
               fingerprint: str, job: str | None, resumed_rows: int, seconds: float, cpu_seconds: float,
               top_k: int | None = None) -> dict:
    """The JSON that vouches for a host's two .npy files (written after them). `k` is their width; `top_k` the
    TopK asked, when more than any row can have (k was then lowered to that)."""
    files = names(host)
    meta = {
        "format": FORMAT, "version": VERSION, "host": host, "hosts": hosts, "start": start, "stop": stop, "k": k,
        "top_k": k if top_k is None else top_k,
        "min_score": min_score, "input_fingerprint": fingerprint, "job": job, "resumed_rows": resumed_rows,
        "files": {files[kind]: sha256_file(out_dir / files[kind]) for kind in ("neighbors", "scores")},
        "seconds": seconds, "cpu_seconds": cpu_seconds,
    }
    write_json(out_dir / files["meta"], meta)
    return meta


@dataclass(frozen=True)
class Shard:
    meta_path: Path
    meta: dict
    headers: dict = field(default_factory=dict, compare=False)

    @property
    def start(self) -> int:
        return int(self.meta["start"])

    @property
    def stop(self) -> int:
        return int(self.meta["stop"])

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
        """Rows [lo, hi) of this shard (relative to its start), read from disk: memory holds one batch."""
        return npy.read_rows(self.path(kind), lo, hi, self.header(kind))

    def batches(self, batch_rows: int, total_rows: int):
        """(first row, neighbors, scores) in row order, `batch_rows` at a time; an index outside the matrix is an
        error naming the shard."""
        for lo in range(0, self.stop - self.start, batch_rows):
            hi = min(lo + batch_rows, self.stop - self.start)
            nb, sc = self.rows("neighbors", lo, hi), self.rows("scores", lo, hi)
            if ((nb < -1) | (nb >= total_rows)).any():
                raise StepError(f"{self.meta_path}: neighbour index out of range near row {self.start + lo}; "
                                "rerun the Similarity step")
            yield self.start + lo, nb, sc


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


def collect_shards(shards_dir: Path, rows: int, fingerprint: str) -> list[Shard]:
    """Every shard checked; together they must cover [0, rows) exactly once, from one job's hosts."""
    metas = sorted(shards_dir.rglob("shard-*.json"))
    if not metas:
        raise StepError(f"{shards_dir}: no shard-<host>.json files; the Similarity step wrote no output "
                        "(check its logs)")
    shards = [_check_shard(path, fingerprint) for path in metas]
    _check_one_job(shards)
    ks = {s.meta["k"] for s in shards}
    thresholds = {s.meta["min_score"] for s in shards}
    host_lists = {tuple(s.meta["hosts"]) for s in shards}
    if len(ks) > 1 or len(thresholds) > 1 or len(host_lists) > 1:
        raise StepError(f"{shards_dir}: shards disagree on k {sorted(ks)}, threshold or host list: they come from "
                        "different training jobs; rerun the Similarity step into an empty output")
    hosts = list(host_lists.pop())
    seen: dict[str, Shard] = {}
    for shard in shards:
        host = shard.meta["host"]
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
    ordered = sorted(shards, key=lambda s: (s.start, s.stop))
    position = 0
    for shard in ordered:
        if shard.start != position:
            what = "overlaps" if shard.start < position else "leaves a gap before"
            raise StepError(f"{shard.meta_path}: rows [{shard.start}, {shard.stop}) {what} row {position}; "
                            "each row must be covered exactly once: rerun the Similarity step")
        position = shard.stop
    if position != rows:
        raise StepError(f"shards cover rows [0, {position}) but the matrix has {rows} rows; rerun the Similarity step")
    return ordered


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
        shard.start, shard.stop, meta["k"], meta["host"], meta["files"]  # noqa: B018 - presence check
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
        if shape != (shard.stop - shard.start, meta["k"]):
            raise StepError(f"{shard.path(kind)}: shape {shape}, expected "
                            f"({shard.stop - shard.start}, {meta['k']}); rerun the Similarity step")
    return shard
