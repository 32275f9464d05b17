"""Preprocess step: read the matrix, validate, L2-normalize, write float32 chunks + ids + manifest.

    python3 -m steps.preprocess --input-uri=<InputData> [--id-column=NAME] [--non-finite=error|drop]
                                [--chunk-rows=N] [--memory-budget-mb=MB] [--vector-column=NAME]
                                [--delimiter=C]
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
import math
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
    parser.add_argument("--vector-column", default=None,
                        help="parquet: the list column holding the vectors (default: the only one)")
    parser.add_argument("--delimiter", default=None,
                        help="CSV/TSV: the field delimiter, one character (default: a tab for .tsv, else a comma)")
    parser.add_argument("--query-uri", default=None, help="queries mode: where the queries came from")
    parser.add_argument("--query-id-column", default=None, help="column holding the query ids (parquet/csv)")
    parser.add_argument("--query-files", type=int, default=DEFAULT_QUERY_FILES,
                        help="query chunk files (queries.chunk_files): balanced by count across the hosts")
    parser.add_argument("--self-rule", choices=SELF_RULES, default=SELF_RULES[0],
                        help="a query whose id is a corpus id: exclude that corpus row (default) or keep it")
    args = parser.parse_args(list(argv))
    if args.delimiter is not None and len(args.delimiter) != 1:
        parser.error(f"--delimiter must be one character, got {args.delimiter!r}")
    if args.query_files < 1:
        parser.error(f"--query-files must be at least 1, got {args.query_files}")
    args.query_id_column = args.query_id_column or None
    if args.chunk_rows < 1:
        parser.error(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    if args.memory_budget_mb < 16:
        parser.error(f"--memory-budget-mb must be at least 16, got {args.memory_budget_mb}")
    args.id_column = args.id_column or None  # pipelines pass "" for an unset parameter
    args.vector_column = args.vector_column or None
    return args


# ---------------------------------------------------------------------------------------------- pure functions


def normalize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalize float64 rows -> (float32 rows, mask of all-zero rows). All-zero rows stay all-zero.

    Each row is first divided by its largest magnitude, so the sum of squares can neither overflow (1e200)
    nor underflow (1e-200) in float64. The result is canonical: float32(s / sqrt(S)), s a scaled value and S
    the correctly rounded sum of its row's squares s*s (math.fsum), whatever order a summation takes; so a
    sparse row (normalize_sparse_rows, which sums its non-zeros only) gives the very bits its dense form gives.
    """
    scale = np.max(np.abs(values), axis=1) if values.shape[1] else np.zeros(len(values))
    zero = scale == 0
    scaled = values / np.where(zero, 1.0, scale)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    scaled /= np.where(zero, 1.0, norms)[:, None]  # now the quotients
    step = max(1, len(values) // 8)  # the check's temporaries stay an eighth of the batch
    near = np.concatenate([near_midpoint(scaled[a: a + step], values.shape[1]).any(axis=1)
                           for a in range(0, len(values), step)]) if len(values) else np.zeros(0, bool)
    units = scaled.astype(np.float32)
    for r in np.flatnonzero(near & ~zero).tolist():
        units[r] = exact_units(values[r] / scale[r])
    return units, zero


def normalize_sparse_rows(values):
    """normalize_rows for a canonical CSR float64 matrix (sorted, no duplicates, no explicit zeros), never
    densified -> (CSR float32, mask of rows with no values): the float32 values of its dense form, bit for bit."""
    import scipy.sparse as sp

    counts = np.diff(values.indptr)
    row_of = np.repeat(np.arange(values.shape[0]), counts)
    scale = np.zeros(values.shape[0])
    filled = counts > 0
    if values.nnz:
        scale[filled] = np.maximum.reduceat(np.abs(values.data), values.indptr[:-1][filled])
    zero = scale == 0
    scaled = values.data / np.where(zero, 1.0, scale)[row_of]
    norms = np.sqrt(np.bincount(row_of, scaled * scaled, minlength=values.shape[0]))
    quotients = scaled / np.where(zero, 1.0, norms)[row_of]
    units = quotients.astype(np.float32)
    near = near_midpoint(quotients, counts[row_of])
    for r in np.unique(row_of[near]).tolist():
        a, b = values.indptr[r], values.indptr[r + 1]
        units[a:b] = exact_units(scaled[a:b])
    out = sp.csr_matrix((units, values.indices.copy(), values.indptr.copy()), shape=values.shape)
    out.eliminate_zeros()  # a value far below its row's largest can round to a float32 zero, as in dense form
    return out, zero


def near_midpoint(quotients: np.ndarray, terms) -> np.ndarray:
    """True where a float32 rounding midpoint lies so close to a float64 quotient s / sqrt(sum) that the sum's
    rounding (gamma_terms, summed in any order) could move the quotient across it. In float64 ulps of the
    quotient (each at least |quotient| 2**-53) the quotient may move by at most `slack`; a midpoint's low 29
    bits are 2**28. Float32 subnormals (other spacing) always count as near."""
    n = np.asarray(terms, dtype=np.float64) + 2
    gamma = 1.01 * n * 2.0 ** -53 / (1 - n * 2.0 ** -53)  # as steps/kernel/exact.py rounding_bound
    slack = np.ceil((gamma / 2 + 4 * 2.0 ** -53) * 2.0 ** 53).astype(np.int64) + 1
    low = (quotients.view(np.uint64) & np.uint64((1 << 29) - 1)).astype(np.int64)
    low -= 1 << 28
    np.abs(low, out=low)
    magnitude = np.abs(quotients)
    return ((low <= slack) | (magnitude < 2.0 ** -125)) & (magnitude > 0)


def exact_units(scaled: np.ndarray) -> np.ndarray:
    """One row's canonical float32 units from its scaled float64 values: the sum of squares by math.fsum."""
    return (scaled / np.sqrt(math.fsum((scaled * scaled).tolist()))).astype(np.float32)


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


def non_finite_rows(values) -> np.ndarray:
    """Mask of rows holding at least one NaN or infinity (dense rows, or a CSR matrix's)."""
    if isinstance(values, np.ndarray):
        return ~np.isfinite(values).all(axis=1)
    bad = np.zeros(values.shape[0], bool)
    bad[np.repeat(np.arange(values.shape[0]), np.diff(values.indptr))[~np.isfinite(values.data)]] = True
    return bad


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
    if plan.vector_column:
        return f"column {plan.vector_column!r} value {index}"
    return f"column {plan.feature_columns[index]!r}" if plan.feature_columns else f"column {index}"


def describe_non_finite(plan: MatrixPlan, batch: MatrixBatch, row: int) -> str:
    """'<file> row R column C: value is NaN or missing' for the first bad value of a batch row."""
    if not isinstance(batch.values, np.ndarray):  # CSR: the row's first stored value that is not finite
        a, b = batch.values.indptr[row], batch.values.indptr[row + 1]
        at = a + int(np.flatnonzero(~np.isfinite(batch.values.data[a:b]))[0])
        col, value = int(batch.values.indices[at]), batch.values.data[at]
        return f"{batch.where(row)} {column_label(plan, col)}: value is {describe_value(value)}"
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
               budget_mb: int = DEFAULT_PREPROCESS_BUDGET_MB, vector_column: str | None = None,
               delimiter: str | None = None) -> dict:
    """Run the whole step; returns the manifest it wrote."""
    started = time.monotonic()
    plan = plan_matrix(input_dir, id_column, vector_column, delimiter)
    sparse = plan.format == "npz"
    if plan.ignored_columns:
        print(f"preprocess: vectors from column {plan.vector_column!r}; ignored columns: "
              f"{', '.join(plan.ignored_columns)}", flush=True)
    # Sparse input: a file is read whole, its batches are slices of it; its chunks end at chunk_rows rows or
    # at half the budget of values, whichever comes first (NormalizedWriter.chunk_bytes).
    chunk_rows, batch_rows = (chunk_rows, chunk_rows) if sparse else buffer_rows(plan.dim, chunk_rows, budget_mb)
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
        out = NormalizedWriter(staging, chunk_rows, plan.dim, plan.id_type, sparse=plan.format == "npz",
                               chunk_bytes=budget_mb * MB // 2)
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
            dense = isinstance(batch.values, np.ndarray)  # else CSR (sparse input)
            rows = batch.values.shape[0]
            progress.computed_rows(rows)
            counts.rows_per_file[batch.key] += rows
            if integers:
                stored = batch.values if dense else batch.values.data
                counts.large_integers += int((np.abs(stored) > FLOAT32_EXACT_INTEGER).sum())
            kept = _kept_rows(plan, batch, non_finite, counts)
            if duplicates:
                duplicates.add(batch.ids[kept])
            normalized, zero = (normalize_rows if dense else normalize_sparse_rows)(batch.values[kept])
            counts.zero_rows += int(zero.sum())
            out.add(normalized, batch.ids[kept], input_row + np.flatnonzero(kept))
            input_row += rows
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
                           plan.id_column, vector_column=plan.vector_column, delimiter=plan.files[0].delimiter)
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
            **({"vector_column": plan.vector_column, "ignored_columns": list(plan.ignored_columns)}
               if plan.vector_column else {}),
            **({"delimiter": plan.files[0].delimiter} if plan.format == "csv" else {}),
        },
        zero_rows=counts.zero_rows, dropped_rows=counts.dropped_rows, dropped_sample=counts.dropped_sample,
        non_finite=non_finite,
    )


def preprocess_queries(input_dir: Path, corpus_dir: Path, output_dir: Path, scratch: Path, query_uri: str,
                       id_column: str | None = None, non_finite: str = "error", files: int = DEFAULT_QUERY_FILES,
                       rule: str = SELF_RULES[0], chunk_rows: int = DEFAULT_CHUNK_ROWS,
                       budget_mb: int = DEFAULT_PREPROCESS_BUDGET_MB, vector_column: str | None = None,
                       delimiter: str | None = None) -> dict:
    """Queries mode: the query matrix read and normalized as the corpus is (into `scratch`; a parquet vector
    column and a CSV delimiter are the corpus's settings), then cut into the queries folder's balanced chunk
    files (steps/formats/queries.py). Returns its manifest."""
    corpus = load_normalized(corpus_dir, verify=False, open_chunks=False)
    if corpus.sparse:
        raise StepError(f"queries mode takes dense vectors, and the corpus ({corpus_dir}) is sparse .npz: the "
                        "sparse kernel runs self-joins only; use mode: all_pairs, or give dense .npy/parquet/CSV")
    normalized_dir = scratch / "queries-normalized"
    shutil.rmtree(normalized_dir, ignore_errors=True)
    try:
        try:
            pre = preprocess(input_dir, normalized_dir, query_uri, id_column, non_finite, chunk_rows, budget_mb,
                             vector_column, delimiter)
        except StepError as exc:  # the readers' messages name the corpus's settings: say the queries' instead
            raise StepError(f"the queries ({query_uri}): {as_queries(str(exc))}") from None
        if pre.get("layout") == "sparse":
            raise StepError(f"the queries ({query_uri}) are sparse .npz: queries mode takes dense vectors "
                            "(.npy, parquet or CSV of the corpus's dimension)")
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
                          args.input_uri, args.id_column, args.non_finite, args.chunk_rows, args.memory_budget_mb,
                          args.vector_column, args.delimiter)
    if args.query_uri is not None:
        queries = preprocess_queries(here(processing_input_path(QUERIES)), here(processing_output_path(NORMALIZED)),
                                     here(processing_output_path(QUERIES)), here(SCRATCH_PATH), args.query_uri,
                                     args.query_id_column, args.non_finite, args.query_files, args.self_rule,
                                     args.chunk_rows, args.memory_budget_mb, args.vector_column, args.delimiter)
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
