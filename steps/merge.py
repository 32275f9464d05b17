"""Merge step: verify the hosts' shards cover every row exactly once, write one artifact.

Streams shard by shard and batch by batch: memory holds the row ids (N) and one batch, never N x k.
Nothing is trusted: each shard's metadata, checksums, shape, row range and input fingerprint are checked,
all shards must come from one training job (their `job`) and name hosts of that job's host list, and no
artifact file is written unless all of them pass. See docs/container-contract.md.

Output: the files are built in a staging folder and moved into the `artifact` output only when all are
complete (the manifest, with every file's size and SHA-256, last). The service uploads them after the
container exits; the Register step (steps/register.py) then checks them where they landed and registers them.
"""
from __future__ import annotations

import json
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import npy, paths
from .errors import StepArgumentParser, StepError, run_step
from .io import atomic_path, sha256_file, write_json
from .normalized import MANIFEST, load_normalized

FORMAT, VERSION = "allpairs.artifact", 1
BATCH_EDGES = 1 << 20  # edges handled at once (about 60 MB of arrays): memory follows this, not N or N*k
# Moved into place together, the manifest last (Register adds registration.json once it has registered them).
ARTIFACT_FILES = ("neighbors.parquet", "neighbors.npy", "scores.npy", MANIFEST)


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
        return self.meta_path.parent / f"shard-{self.meta['host']}.{kind}.npy"

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
        if meta.get("format") != "allpairs.shard" or meta.get("version") != 1:
            raise ValueError("not an allpairs shard, version 1")
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


def read_ids(normalized) -> pa.Array:
    path = normalized.ids_path()
    digest = normalized.manifest["ids"].get("sha256")
    if digest and sha256_file(path) != digest:
        raise StepError(f"{path}: checksum differs from the Preprocess manifest; rerun the Preprocess step")
    ids = pq.read_table(path, columns=["id"]).column("id").combine_chunks()
    if len(ids) != normalized.rows:
        raise StepError(f"{path}: {len(ids)} ids for {normalized.rows} rows; rerun the Preprocess step")
    return ids


def write_artifact(shards: list[Shard], ids: pa.Array, rows: int, k: int, out: Path) -> dict:
    """Stream the shards into neighbors.npy, scores.npy and neighbors.parquet; return counts."""
    index_dtype = np.int32 if rows < 2**31 else np.int64
    schema = pa.schema([("id", ids.type), ("neighbor_id", ids.type), ("rank", pa.int32()), ("score", pa.float32())])
    pairs = short_rows = 0
    batch_rows = max(1, BATCH_EDGES // max(k, 1))
    with npy.row_writer(out / "neighbors.npy", index_dtype, (rows, k)) as all_n, \
            npy.row_writer(out / "scores.npy", np.float32, (rows, k)) as all_s, \
            atomic_path(out / "neighbors.parquet") as tmp_p, pq.ParquetWriter(tmp_p, schema) as writer:
        for shard in shards:  # in row order: collect_shards sorted them and checked they tile [0, rows)
            for lo in range(0, shard.stop - shard.start, batch_rows):
                hi = min(lo + batch_rows, shard.stop - shard.start)
                nb, sc = shard.rows("neighbors", lo, hi), shard.rows("scores", lo, hi)
                first = shard.start + lo
                if ((nb < -1) | (nb >= rows)).any():
                    raise StepError(f"{shard.meta_path}: neighbour index out of range near row {first}; "
                                    "rerun the Similarity step")
                all_n.write(nb)
                all_s.write(sc)
                found = nb >= 0
                pairs += int(found.sum())
                short_rows += int((~found[:, -1]).sum())
                r, c = np.nonzero(found)
                writer.write_table(pa.table({
                    "id": ids.take(pa.array(first + r)),
                    "neighbor_id": ids.take(pa.array(nb[r, c])),
                    "rank": pa.array((c + 1).astype(np.int32)),
                    "score": pa.array(sc[r, c]),
                }, schema=schema))
    return {"pairs": pairs, "rows_with_fewer_than_k": short_rows}


def parse_parameters(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StepError(f"--parameter {item!r}: expected Name=value")
        out[name] = value
    return out


def merge(shards_dir: Path, normalized_dir: Path, out: Path, scratch: Path, args) -> dict:
    began = time.time()
    normalized = load_normalized(normalized_dir, verify=False)  # Merge reads the ids, not the chunks
    shards = collect_shards(unpack_shards(shards_dir, scratch), normalized.rows, normalized.fingerprint)
    k = int(shards[0].meta["k"])
    counts = write_artifact(shards, read_ids(normalized), normalized.rows, k, out)
    pre = normalized.manifest
    files = {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
             for name in ("neighbors.parquet", "neighbors.npy", "scores.npy")}
    manifest = {
        "format": FORMAT, "version": VERSION,
        "rows": normalized.rows, "dim": normalized.dim, "k": k, "threshold": shards[0].meta["min_score"],
        "padding": {"index": -1, "score": "NaN"}, "rank": "1 = most similar",
        "ids": {"source": pre["ids"].get("source"), "type": pre["ids"].get("type")},
        "counts": {"zero_rows": pre.get("zero_rows", 0), "dropped_rows": pre.get("dropped_rows", 0), **counts},
        "input": {**{key: pre["input"].get(key) for key in ("uri", "format", "fingerprint", "source_dtype")},
                  "normalized_fingerprint": normalized.fingerprint},
        "parameters": parse_parameters(args.parameter),
        "execution_id": args.execution_id, "artifact_uri": args.artifact_uri,
        "training_job": shards[0].meta.get("job"),
        "hosts": [{"host": s.meta["host"], "start": s.start, "stop": s.stop, "seconds": s.meta.get("seconds"),
                   "cpu_seconds": s.meta.get("cpu_seconds"),
                   "resumed_rows": s.meta.get("resumed_rows", 0)} for s in shards],
        "files": files,
        "timings": {"preprocess_seconds": pre.get("seconds"),
                    "similarity_seconds": max((s.meta.get("seconds") or 0) for s in shards),  # the slowest host
                    "similarity_cpu_seconds": round(sum(s.meta.get("cpu_seconds") or 0 for s in shards), 3),
                    "merge_seconds": round(time.time() - began, 3)},
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def main(argv: Sequence[str]) -> None:
    parser = StepArgumentParser(prog="python -m steps.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--execution-id", required=True)
    parser.add_argument("--artifact-uri", required=True, help="where the artifact output lands (for the manifest)")
    parser.add_argument("--parameter", action="append", default=[])
    args = parser.parse_args(argv)
    out = paths.processing_output("artifact")
    # Build in a staging folder and move the files in only when all are complete and verified.
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = merge(paths.processing_input("shards"), paths.processing_input("normalized"), staging,
                         paths.opt_ml() / "processing" / "scratch", args)
        for name in ARTIFACT_FILES:  # the manifest last: a manifest in place vouches for the files beside it
            (staging / name).replace(out / name)
    except BaseException:
        for name in ARTIFACT_FILES:
            (out / name).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"merged {manifest['rows']} rows, {manifest['counts']['pairs']} pairs into {args.artifact_uri}", flush=True)

def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a processing job's is read."""
    return run_step("merge", main, argv, job=paths.PROCESSING)


if __name__ == "__main__":
    sys.exit(run())
