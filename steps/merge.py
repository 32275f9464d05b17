"""Merge step: verify the hosts' shards cover every row exactly once, write one artifact.

    python3 -m steps.merge --execution-id <PipelineExecutionId> --artifact-uri <where the output lands>
                           [--parameter Name=value ...]   (the execution's pipeline parameters, for the record)

Streams shard by shard and batch by batch: memory holds the row ids (N), one counter per row for the report
(steps/formats/report.py) and one batch, never N x k. Nothing is trusted (steps/formats/shards.py says what is
checked); no artifact file is written unless every shard passes. Progress lines as every step's (steps/progress.py).

Output: the files are built in a staging folder and moved into the `artifact` output only when all are
complete (the manifest, with every file's size and SHA-256, last). The service uploads them after the
container exits; the Register step (steps/register.py) then checks them where they landed and registers them.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from .contract import (ALL_PAIRS_MODE, ARTIFACT, ARTIFACT_DATA_FILES, ARTIFACT_FILES, CORPUS_PARQUET, MANIFEST,
                       MIN_SCORE_PARAMETER, NO_THRESHOLD, NORMALIZED, PROCESSING, QUERIES, QUERIES_MODE, REPORT_HTML,
                       SCRATCH_PATH, SHARDS, TOP_K_PARAMETER, here, processing_input_path, processing_output_path)
from .errors import StepArgumentParser, StepError, run_step
from .formats import artifact, report, shards
from .formats import queries as query_format
from .formats.normalized import load_normalized, read_id_columns
from .io import write_bytes
from .order import combine
from .progress import Progress, tracked


def parse_parameters(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StepError(f"--parameter {item!r}: expected Name=value")
        out[name] = value
    return out


def check_parameters(found: shards.Shards, parameters: dict[str, str], shards_dir: Path) -> None:
    """The shards must have been computed with this execution's TopK and MinScore: shards of another execution
    (same data, other parameters) put in place of this one's would otherwise give a k=20 artifact for TopK=50.
    (TopK as asked: the hosts compute fewer when no row can have that many.)"""
    k, threshold = found.top_k, found.min_score
    if TOP_K_PARAMETER in parameters:
        wanted = _number(parameters[TOP_K_PARAMETER], int, TOP_K_PARAMETER)
        if k != wanted:
            raise StepError(f"{shards_dir}: the shards were computed with k={k}, but this execution's TopK is "
                            f"{wanted}: they belong to another execution; rerun the Similarity step into an empty "
                            "output")
    if MIN_SCORE_PARAMETER in parameters:
        wanted = _number(parameters[MIN_SCORE_PARAMETER], float, MIN_SCORE_PARAMETER)
        wanted = None if wanted <= NO_THRESHOLD else wanted  # as the hosts read it (steps/similarity.py)
        if threshold != wanted:
            shown = "none" if threshold is None else threshold
            raise StepError(f"{shards_dir}: the shards were computed with min_score={shown}, but this execution's "
                            f"MinScore is {parameters[MIN_SCORE_PARAMETER]}: they belong to another execution; "
                            "rerun the Similarity step into an empty output")


def _number(text: str, kind, name: str):
    try:
        return kind(text)
    except ValueError:
        raise StepError(f"--parameter {name}={text!r}: not a valid {kind.__name__}") from None


def merge(shards_dir: Path, normalized_dir: Path, out: Path, scratch: Path, args) -> dict:
    """Write the artifact's files and manifest into `out`; returns the manifest."""
    began = time.time()
    normalized = load_normalized(normalized_dir, verify=False, open_chunks=False)  # the ids, not the vectors
    found = shards.collect_shards(shards.unpack_shards(shards_dir, scratch), normalized.rows, normalized.fingerprint)
    parameters = parse_parameters(args.parameter)
    check_parameters(found, parameters, shards_dir)
    k = found.k
    # Each row's partial lists combined (exact: steps/order.py), in row order, a bounded batch at a time.
    lists_per_row = max(len(refs) for refs in found.by_block.values()) if found.by_block else 1
    batches = found.batches(artifact.batch_rows(k * lists_per_row), lambda parts: combine(parts, k))
    progress = Progress(normalized.rows, None, lambda line: print(f"merge: {line}", flush=True))
    stats = report.Stats(normalized.rows, k)  # the report's figures, gathered as the batches pass
    rows = read_id_columns(normalized)
    ids = rows.column("id").combine_chunks()
    counts = artifact.write_files(stats.observe(tracked(batches, progress, lambda b: len(b[1]))), ids,
                                  normalized.rows, k, out, input_rows=rows.column("input_row").combine_chunks())
    pre = normalized.manifest
    top_k = found.top_k  # TopK as asked; k is less when no row could have that many
    manifest = {
        "rows": normalized.rows, "dim": normalized.dim, "k": k, "top_k": top_k,
        "notes": [] if k == top_k else [artifact.clamp_note(top_k, k, normalized.rows, pre.get("zero_rows", 0))],
        "threshold": found.min_score,
        "padding": {"index": -1, "score": "NaN"}, "rank": "1 = most similar",
        "ids": {"source": pre["ids"].get("source"), "type": pre["ids"].get("type")},
        "counts": {"zero_rows": pre.get("zero_rows", 0), "dropped_rows": pre.get("dropped_rows", 0), **counts},
        "input": {**{key: pre["input"].get(key) for key in ("uri", "format", "fingerprint", "source_dtype")},
                  "normalized_fingerprint": normalized.fingerprint, "layout": pre.get("layout", "dense")},
        "parameters": parameters,
        "execution_id": args.execution_id, "artifact_uri": args.artifact_uri,
        "training_job": found.shards[0].meta.get("job"),
        "grid": found.grid,
        "hosts": [{"host": s.host, "lists": len(s.meta["lists"]), "list_rows": s.meta["rows"],
                   "seconds": s.meta.get("seconds"), "cpu_seconds": s.meta.get("cpu_seconds"),
                   "resumed_steps": s.meta.get("resumed_steps", 0), "kernel": s.meta.get("kernel", "dense")}
                  for s in found.shards],
        "timings": {"preprocess_seconds": pre.get("seconds"),
                    "similarity_seconds": max((s.meta.get("seconds") or 0) for s in found.shards),  # the slowest
                    "similarity_cpu_seconds": round(sum(s.meta.get("cpu_seconds") or 0 for s in found.shards), 3),
                    "merge_seconds": round(time.time() - began, 3)},
    }
    write_bytes(out / REPORT_HTML, report.render(stats, manifest, ids).encode())
    artifact.write_manifest(out, manifest)
    return manifest


def merge_queries(shards_dir: Path, normalized_dir: Path, queries_dir: Path, out: Path, scratch: Path, args) -> dict:
    """Queries mode: the artifact's rows are the query rows, its neighbour indices corpus rows; corpus.parquet
    names those (the artifact stays self-contained). Every query row covered exactly once, or nothing written."""
    began = time.time()
    normalized = load_normalized(normalized_dir, verify=False, open_chunks=False)
    queries = query_format.read_manifest(queries_dir)
    if queries.get("corpus_fingerprint") != normalized.fingerprint:
        raise StepError(f"{queries_dir / MANIFEST}: the queries were prepared against another corpus (fingerprint "
                        f"{str(queries.get('corpus_fingerprint'))[:12]}, this one's is {normalized.fingerprint[:12]}); "
                        "rerun the Preprocess step")
    found = shards.collect_query_shards(shards.unpack_shards(shards_dir, scratch), normalized.rows,
                                        normalized.fingerprint, queries)
    parameters = parse_parameters(args.parameter)
    check_parameters(found, parameters, shards_dir)
    k, rows = found.k, int(queries["rows"])
    batches = found.batches(artifact.batch_rows(k))
    progress = Progress(rows, None, lambda line: print(f"merge: {line}", flush=True))
    stats = report.Stats(rows, k, normalized.rows)
    query_rows = query_format.read_query_ids(queries_dir, queries)
    corpus_rows = read_id_columns(normalized)
    ids, corpus_ids = query_rows.column("id").combine_chunks(), corpus_rows.column("id").combine_chunks()
    counts = artifact.write_files(stats.observe(tracked(batches, progress, lambda b: len(b[1]))), ids, rows, k, out,
                                  input_rows=query_rows.column("input_row").combine_chunks(),
                                  corpus=(corpus_ids, corpus_rows.column("input_row").combine_chunks()))
    pre, top_k = normalized.manifest, found.top_k
    most = max(1, normalized.rows - pre.get("zero_rows", 0))
    manifest = {
        "mode": QUERIES_MODE, "rows": rows, "dim": normalized.dim, "k": k, "top_k": top_k,
        "notes": [] if k == top_k else [f"TopK={top_k} is more than any query can have: the corpus has {most} "
                                        f"rows with a direction; k is {k}, not {top_k}"],
        "threshold": found.min_score, "padding": {"index": -1, "score": "NaN"}, "rank": "1 = most similar",
        "ids": {"source": queries["ids"].get("source"), "type": queries["ids"].get("type")},
        "corpus": {"file": CORPUS_PARQUET, "rows": normalized.rows,
                   "ids": {"source": pre["ids"].get("source"), "type": pre["ids"].get("type")},
                   "zero_rows": pre.get("zero_rows", 0), "dropped_rows": pre.get("dropped_rows", 0)},
        "self_rule": queries["self_rule"], "queries_with_their_id_in_the_corpus": queries["excluded"],
        "counts": {"zero_rows": queries.get("zero_rows", 0), "dropped_rows": queries.get("dropped_rows", 0), **counts},
        "input": {**{key: pre["input"].get(key) for key in ("uri", "format", "fingerprint", "source_dtype")},
                  "normalized_fingerprint": normalized.fingerprint},
        "queries": {**{key: queries["input"].get(key) for key in ("uri", "format", "fingerprint", "source_dtype")},
                    "queries_fingerprint": queries["fingerprint"], "files": len(queries["files"])},
        "parameters": parameters,
        "execution_id": args.execution_id, "artifact_uri": args.artifact_uri,
        "training_job": found.shards[0].meta.get("job"),
        "hosts": [{"host": s.host, "lists": len(s.meta["lists"]), "list_rows": s.meta["rows"],
                   "query_files": [f["file"] for f in s.meta.get("query_files", [])],
                   "seconds": s.meta.get("seconds"), "cpu_seconds": s.meta.get("cpu_seconds"),
                   "resumed_steps": s.meta.get("resumed_steps", 0)} for s in found.shards],
        "timings": {"preprocess_seconds": pre.get("seconds"),
                    "similarity_seconds": max((s.meta.get("seconds") or 0) for s in found.shards),
                    "similarity_cpu_seconds": round(sum(s.meta.get("cpu_seconds") or 0 for s in found.shards), 3),
                    "merge_seconds": round(time.time() - began, 3)},
    }
    write_bytes(out / REPORT_HTML, report.render(stats, manifest, ids, corpus_ids).encode())
    artifact.write_manifest(out, manifest)
    return manifest


def main(argv: Sequence[str]) -> None:
    parser = StepArgumentParser(prog="python -m steps.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--execution-id", required=True)
    parser.add_argument("--artifact-uri", required=True, help="where the artifact output lands (for the manifest)")
    parser.add_argument("--parameter", action="append", default=[])
    parser.add_argument("--mode", choices=(ALL_PAIRS_MODE, QUERIES_MODE), default=ALL_PAIRS_MODE,
                        help="queries: the query rows' lists against the corpus (input `queries` too)")
    args = parser.parse_args(argv)
    queries = args.mode == QUERIES_MODE
    # The manifest last: a manifest in place vouches for the files beside it.
    files = (*ARTIFACT_DATA_FILES, CORPUS_PARQUET, REPORT_HTML, MANIFEST) if queries else ARTIFACT_FILES
    out = here(processing_output_path(ARTIFACT))
    # Build in a staging folder and move the files in only when all are complete and verified.
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if queries:
            manifest = merge_queries(here(processing_input_path(SHARDS)), here(processing_input_path(NORMALIZED)),
                                     here(processing_input_path(QUERIES)), staging, here(SCRATCH_PATH), args)
        else:
            manifest = merge(here(processing_input_path(SHARDS)), here(processing_input_path(NORMALIZED)), staging,
                             here(SCRATCH_PATH), args)
        for name in files:
            (staging / name).replace(out / name)
    except BaseException:
        for name in files:
            (out / name).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"merged {manifest['rows']} rows, {manifest['counts']['pairs']} pairs into {args.artifact_uri}", flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a processing job's is read."""
    return run_step("merge", main, argv, job=PROCESSING)


if __name__ == "__main__":
    sys.exit(run())
