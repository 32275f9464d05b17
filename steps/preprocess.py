"""Preprocess step: read the matrix, validate, L2-normalize, write float32 chunks + ids + manifest.

    python3 -m steps.preprocess --input-uri=<InputData> [--id-column=NAME] [--non-finite=error|drop]
                                [--chunk-rows=N] [--memory-budget-mb=MB]
                                [--query-uri=<QueryData> [--query-id-column=NAME] [--query-files=F]
                                 [--self-rule=exclude-same-id|keep]]   (queries mode)

Reads the channel /opt/ml/processing/input/matrix/ (see steps/readers/ for formats and file rules) and
writes /opt/ml/processing/output/normalized/ as docs/container-contract.md section 1 says.

Streaming: the input is read in bounded batches; at most one output chunk (float32) and one input batch
(float64, with its working copies) are in memory, plus a 64-bit hash per id (for the duplicate check). Both
buffers are sized in bytes from the row width, half of --memory-budget-mb each (`buffer_rows`), before they
are allocated: a row too wide for the budget is refused naming preprocess.memory_budget_mb, and a wide matrix
(5 x 100,000) gets smaller chunks instead of a chunk_rows x D buffer.

Queries mode (--query-uri): the query matrix (channel /opt/ml/processing/input/queries/) is read, checked and
normalized the same way (a scratch normalized folder), then cut into balanced, self-contained chunk files in
/opt/ml/processing/output/queries/ (steps/formats/queries.py says how and why).

Conversion: every input type ends as float32 (the kernel's type). What that costs is stated, not hidden: the
manifest's input.conversion and the step's log say it for float64 and integer input (precision; for
integers, how many values were beyond float32's exact range), see `conversion_cost`.

All-or-nothing output: everything is written under `<output>/.partial/` and moved into place only once the
whole input has been read and checked; the manifest goes last. On any failure `.partial/` is removed, so the
output directory never holds a half-written result (and never a manifest describing one).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .contract import (DEFAULT_CHUNK_ROWS, DEFAULT_PREPROCESS_BUDGET_MB, DEFAULT_QUERY_FILES, MATRIX,
                       NON_FINITE_POLICIES, NORMALIZED, PROCESSING, QUERIES, SCRATCH_PATH, SELF_RULES, here,
                       processing_input_path, processing_output_path)
from .errors import StepArgumentParser, StepError, run_step
from .formats import queries as query_format
from .formats.normalized import NormalizedWriter, load_normalized, publish
from .input_shape import ShapeUnknown, file_reader, read_shape
from .io import sha256_file, sha256_text
from .progress import Progress
from .readers import MatrixBatch, MatrixPlan, batch_rows_for, describe_row, iter_matrix, plan_matrix

STAGING_DIR = ".partial"
DROPPED_SAMPLE_SIZE = 10  # dropped rows listed by name in the manifest; the rest are only counted
FLOAT32_EXACT_INTEGER = 2 ** 24  # integers up to this magnitude are exact in float32
BATCH_COPIES = 4  # a float64 input row lives as read, as kept, scaled, and converted: about 4 copies at once
MB = 1 << 20


# ---------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = StepArgumentParser(prog="python -m steps.preprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--input-uri", required=True, help="where the input came from (recorded in the manifest)")
    parser.add_argument("--id-column", default=None, help="column holding the row ids (parquet/csv)")
    parser.add_argument("--non-finite", choices=NON_FINITE_POLICIES, default=NON_FINITE_POLICIES[0],
                        help="NaN/inf values: fail (default) or drop those rows and count them")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows per output chunk, at most (wide rows make smaller chunks)")
    parser.add_argument("--memory-budget-mb", type=int, default=DEFAULT_PREPROCESS_BUDGET_MB,
                        help="bytes for the batch and chunk buffers (preprocess.memory_budget_mb)")
    parser.add_argument("--query-uri", default=None, help="queries mode: where the queries came from")
    parser.add_argument("--query-id-column", default=None, help="column holding the query ids (parquet/csv)")
    parser.add_argument("--query-files", type=int, default=DEFAULT_QUERY_FILES,
                        help="query chunk files (queries.chunk_files): balanced by count across the hosts")
    parser.add_argument("--self-rule", choices=SELF_RULES, default=SELF_RULES[0],
                        help="a query whose id is a corpus id: exclude that corpus row (default) or keep it")
    args = parser.parse_args(list(argv))
    if args.query_files < 1:
        parser.error(f"--query-files must be at least 1, got {args.query_files}")
    args.query_id_column = args.query_id_column or None
    if args.chunk_rows < 1:
        parser.error(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    if args.memory_budget_mb < 16:
        parser.error(f"--memory-budget-mb must be at least 16, got {args.memory_budget_mb}")
    args.id_column = args.id_column or None  # pipelines pass "" for an unset parameter
    return args


# ---------------------------------------------------------------------------------------------- pure functions


def normalize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalize float64 rows -> (float32 rows, mask of all-zero rows). All-zero rows stay all-zero.

    Each row is first divided by its largest magnitude, so the sum of squares can neither overflow (1e200)
    nor underflow (1e-200) in float64.
    """
    scale = np.max(np.abs(values), axis=1) if values.shape[1] else np.zeros(len(values))
    zero = scale == 0
    scaled = values / np.where(zero, 1.0, scale)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    scaled /= np.where(zero, 1.0, norms)[:, None]
    return scaled.astype(np.float32), zero


def buffer_rows(dim: int, chunk_rows: int, budget_mb: int) -> tuple[int, int]:
    """(rows per chunk, rows per input batch) so that each buffer takes at most half of the budget, checked
    before anything is allocated. A row that does not fit is refused with the budget that would take it."""
    half = budget_mb * MB // 2
    batch_row, chunk_row = 8 * dim * BATCH_COPIES, 4 * dim
    if batch_row > half:
        need = -(-2 * batch_row // MB)
        raise StepError(f"a row of {dim} features takes {batch_row / MB:.1f} MB in Preprocess's buffers (float64, "
                        f"with its working copies), more than half of preprocess.memory_budget_mb={budget_mb} "
                        f"allows; raise preprocess.memory_budget_mb to at least {need} (and preprocess.instance_type "
                        "to one with that much memory)")
    chunk = min(chunk_rows, half // chunk_row)
    return chunk, min(batch_rows_for(dim, chunk), half // batch_row)


def non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Mask of rows holding at least one NaN or infinity."""
    return ~np.isfinite(values).all(axis=1)


def conversion_cost(source_dtype: str, large_integers: int = 0) -> str | None:
    """One sentence: what converting `source_dtype` input to float32 costs (None for float32/float16)."""
    kind = np.dtype(source_dtype).kind
    if kind == "f" and np.dtype(source_dtype).itemsize > 4:
        return (f"{source_dtype} input converted to float32 after normalizing in float64: values keep about 7 "
                "significant digits (relative rounding <= 6e-8), so scores are exact to about 1e-7, not 1e-16; "
                "the chunks take half the input's 8 bytes per value")
    if kind in "iub":
        return (f"{source_dtype} input converted to float32 after normalizing in float64: values keep about 7 "
                f"significant digits (relative rounding <= 6e-8); {large_integers} value(s) beyond "
                f"{FLOAT32_EXACT_INTEGER} (2**24) in magnitude, where integers stop being exact in float32")
    return None


def describe_value(value: float) -> str:
    if np.isnan(value):
        return "NaN or missing"
    return "+inf" if value > 0 else "-inf"


def column_label(plan: MatrixPlan, index: int) -> str:
    return f"column {plan.feature_columns[index]!r}" if plan.feature_columns else f"column {index}"


def describe_non_finite(plan: MatrixPlan, batch: MatrixBatch, row: int) -> str:
    """'<file> row R column C: value is NaN or missing' for the first bad value of a batch row."""
    col = int(np.flatnonzero(~np.isfinite(batch.values[row]))[0])
    return f"{batch.where(row)} {column_label(plan, col)}: value is {describe_value(batch.values[row, col])}"


# ---------------------------------------------------------------------------------------------- writers


class DuplicateIdCheck:
    """Ids must be unique. Keeps a 64-bit hash per id (8 bytes a row, not a Python object per id); only when two
    hashes match does a second pass over the input's ids name both rows (or find a harmless hash collision)."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, ids: np.ndarray) -> None:
        self._hashes.append(pd.util.hash_array(np.asarray(ids)))

    def raise_if_any(self, plan: MatrixPlan, batch_rows: int, non_finite: str) -> None:
        hashes = np.sort(np.concatenate(self._hashes)) if self._hashes else np.zeros(0, np.uint64)
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if not len(repeated):
            return
        seen: dict = {}
        for batch in iter_matrix(plan, batch_rows):
            suspect = np.isin(pd.util.hash_array(np.asarray(batch.ids)), repeated)
            if non_finite == "drop":  # the first pass kept only finite rows
                suspect &= ~non_finite_rows(batch.values)
            for row in np.flatnonzero(suspect).tolist():
                value = batch.ids[row].item() if hasattr(batch.ids[row], "item") else batch.ids[row]
                first = seen.setdefault(value, (batch.key, batch.file_row + row))
                if first != (batch.key, batch.file_row + row):
                    raise StepError(
                        f"duplicate id {value!r}: {describe_row(*first)} and {batch.where(row)}; "
                        "ids must be unique: fix the id column (or name another with input.id_column)"
                    )


# ---------------------------------------------------------------------------------------------- the step


@dataclass
class Counts:
    zero_rows: int = 0
    dropped_rows: int = 0
    dropped_sample: list[str] = field(default_factory=list)
    rows_per_file: dict[str, int] = field(default_factory=dict)
    large_integers: int = 0  # integer input: values beyond float32's exact range


def preprocess(input_dir: Path, output_dir: Path, input_uri: str, id_column: str | None = None,
               non_finite: str = "error", chunk_rows: int = DEFAULT_CHUNK_ROWS,
               budget_mb: int = DEFAULT_PREPROCESS_BUDGET_MB) -> dict:
    """Run the whole step; returns the manifest it wrote."""
    started = time.monotonic()
    plan = plan_matrix(input_dir, id_column)
    chunk_rows, batch_rows = buffer_rows(plan.dim, chunk_rows, budget_mb)
    staging = output_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # left over from a crashed run
    staging.mkdir(parents=True)
    try:
        manifest = _write_normalized(plan, staging, input_uri, non_finite, chunk_rows, batch_rows, budget_mb)
        manifest["seconds"] = round(time.monotonic() - started, 3)
        publish(staging, output_dir, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_normalized(plan: MatrixPlan, staging: Path, input_uri: str, non_finite: str, chunk_rows: int,
                      batch_rows: int, budget_mb: int) -> dict:
    try:
        out = NormalizedWriter(staging, chunk_rows, plan.dim, plan.id_type)
    except MemoryError:
        raise StepError(f"cannot allocate a chunk of {chunk_rows} rows x {plan.dim} float32 "
                        f"({chunk_rows * plan.dim * 4 // MB} MB) on this instance; lower preprocess.memory_budget_mb "
                        f"(now {budget_mb}) or choose a preprocess.instance_type with more memory") from None
    duplicates = DuplicateIdCheck() if plan.id_column else None  # row numbers are unique by construction
    counts = Counts(rows_per_file={f.key: 0 for f in plan.files})
    integers = np.dtype(plan.source_dtype).kind in "iub"
    input_row = 0  # the position in the whole input (files in key order) of the batch's first row
    progress = _progress(plan)
    try:
        for batch in iter_matrix(plan, batch_rows):
            progress.computed_rows(len(batch.values))
            counts.rows_per_file[batch.key] += len(batch.values)
            if integers:
                counts.large_integers += int((np.abs(batch.values) > FLOAT32_EXACT_INTEGER).sum())
            kept = _kept_rows(plan, batch, non_finite, counts)
            if duplicates:
                duplicates.add(batch.ids[kept])
            normalized, zero = normalize_rows(batch.values[kept])
            counts.zero_rows += int(zero.sum())
            out.add(normalized, batch.ids[kept], input_row + np.flatnonzero(kept))
            input_row += len(batch.values)
    finally:
        out.close()
    progress.finish()
    if duplicates:
        duplicates.raise_if_any(plan, batch_rows, non_finite)
    _check_not_empty(plan, out.rows_written, counts)
    return _manifest(plan, input_uri, non_finite, out, counts)


def _progress(plan: MatrixPlan) -> Progress:
    """Progress over the input's rows, their total read cheaply (headers, footers; a CSV's estimated)."""
    try:
        shape = read_shape([(f.key, f.bytes) for f in plan.files], file_reader({f.key: f.path for f in plan.files}),
                           plan.id_column)
        total, estimated = shape.rows, not shape.exact
    except ShapeUnknown:
        total, estimated = 0, True
    return Progress(total, None, lambda line: print(f"preprocess: {line}", flush=True), estimated=estimated)


def _kept_rows(plan: MatrixPlan, batch: MatrixBatch, non_finite: str, counts: Counts) -> np.ndarray:
    bad = non_finite_rows(batch.values)
    if not bad.any():
        return ~bad
    if non_finite == "error":
        raise StepError(
            f"{describe_non_finite(plan, batch, int(np.flatnonzero(bad)[0]))}; "
            "fix the input, or set input.non_finite: drop in pipeline.yaml to drop such rows"
        )
    for row in np.flatnonzero(bad)[:max(0, DROPPED_SAMPLE_SIZE - len(counts.dropped_sample))]:
        counts.dropped_sample.append(describe_non_finite(plan, batch, int(row)))
    counts.dropped_rows += int(bad.sum())
    return ~bad


def _check_not_empty(plan: MatrixPlan, rows: int, counts: Counts) -> None:
    if rows:
        return
    where = plan.files[0].key if len(plan.files) == 1 else f"{len(plan.files)} files ({plan.files[0].key}, ...)"
    if counts.dropped_rows:
        raise StepError(
            f"{where}: all {counts.dropped_rows} rows hold NaN or infinite values and were dropped; "
            "nothing is left to compare: fix the input"
        )
    raise StepError(f"{where}: no data rows; point InputData at a matrix with at least one row")


def _manifest(plan: MatrixPlan, input_uri: str, non_finite: str, out: NormalizedWriter, counts: Counts) -> dict:
    files = [{"key": f.key, "bytes": f.bytes, "sha256": sha256_file(f.path), "rows": counts.rows_per_file[f.key]}
             for f in plan.files]
    return out.manifest(
        ids={"source": plan.id_source, "type": plan.id_type},
        input_={
            "uri": input_uri,
            "format": plan.format,
            "files": files,
            "fingerprint": sha256_text(*[part for f in files for part in (f["key"], f["sha256"])]),
            "source_dtype": plan.source_dtype,
            "conversion": conversion_cost(plan.source_dtype, counts.large_integers),
            "columns": list(plan.feature_columns),
            "id_column": plan.id_column,
        },
        zero_rows=counts.zero_rows, dropped_rows=counts.dropped_rows, dropped_sample=counts.dropped_sample,
        non_finite=non_finite,
    )


def preprocess_queries(input_dir: Path, corpus_dir: Path, output_dir: Path, scratch: Path, query_uri: str,
                       id_column: str | None = None, non_finite: str = "error", files: int = DEFAULT_QUERY_FILES,
                       rule: str = SELF_RULES[0], chunk_rows: int = DEFAULT_CHUNK_ROWS,
                       budget_mb: int = DEFAULT_PREPROCESS_BUDGET_MB) -> dict:
    """Queries mode: the query matrix read and normalized as the corpus is (into `scratch`), then cut into the
    queries folder's balanced chunk files (steps/formats/queries.py). Returns its manifest."""
    corpus = load_normalized(corpus_dir, verify=False)
    normalized_dir = scratch / "queries-normalized"
    shutil.rmtree(normalized_dir, ignore_errors=True)
    try:
        try:
            pre = preprocess(input_dir, normalized_dir, query_uri, id_column, non_finite, chunk_rows, budget_mb)
        except StepError as exc:  # the readers' messages name the corpus's settings: say the queries' instead
            raise StepError(f"the queries ({query_uri}): {as_queries(str(exc))}") from None
        if pre["dim"] != corpus.dim:
            raise StepError(f"the queries ({query_uri}) have {pre['dim']} features per row, the corpus "
                            f"{corpus.dim}: point QueryData at vectors of the corpus's dimension")
        max_rows = buffer_rows(pre["dim"], chunk_rows, budget_mb)[0]
        return query_format.write_queries(load_normalized(normalized_dir), corpus, output_dir, files, rule, max_rows)
    finally:
        shutil.rmtree(normalized_dir, ignore_errors=True)


QUERY_SETTINGS = (("InputData", "QueryData"), ("input.id_column", "queries.id_column"),
                  ("processing input 'matrix'", "processing input 'queries'"))


def as_queries(message: str) -> str:
    """A reader's message about the query input: the settings it names are the queries' ones."""
    for corpus, queries in QUERY_SETTINGS:
        message = message.replace(corpus, queries)
    return message


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    manifest = preprocess(here(processing_input_path(MATRIX)), here(processing_output_path(NORMALIZED)),
                          args.input_uri, args.id_column, args.non_finite, args.chunk_rows, args.memory_budget_mb)
    if args.query_uri is not None:
        queries = preprocess_queries(here(processing_input_path(QUERIES)), here(processing_output_path(NORMALIZED)),
                                     here(processing_output_path(QUERIES)), here(SCRATCH_PATH), args.query_uri,
                                     args.query_id_column, args.non_finite, args.query_files, args.self_rule,
                                     args.chunk_rows, args.memory_budget_mb)
        print(f"preprocess: {queries['rows']} query rows in {len(queries['files'])} chunk file(s); "
              f"{queries['excluded']} query id(s) also in the corpus (self rule {queries['self_rule']}); "
              f"{queries['zero_rows']} all-zero query row(s); {queries['dropped_rows']} dropped")
    print(f"preprocess: {manifest['rows']} rows x {manifest['dim']} from {len(manifest['input']['files'])} "
          f"{manifest['input']['format']} file(s); {len(manifest['chunks'])} chunk(s); ids from "
          f"{manifest['ids']['source']}; {manifest['zero_rows']} all-zero row(s); "
          f"{manifest['dropped_rows']} dropped row(s)")
    if manifest["input"]["conversion"]:
        print(f"preprocess: {manifest['input']['conversion']}")


def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a processing job's is read."""
    return run_step("preprocess", main, argv, job=PROCESSING)


if __name__ == "__main__":
    sys.exit(run())
