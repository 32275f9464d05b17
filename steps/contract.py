"""The container contract in one place: what SageMaker (or the local runner) hands the step programs, and what
they hand back. docs/container-contract.md explains it; the compiler (pipeline/compile.py) and the local runner
(pipeline/local) take these names from here, so the definition, the runner and the steps cannot drift apart.

Paths are written as the container sees them (/opt/ml/...). Locally ALLPAIRS_OPT_ML re-roots /opt/ml per
simulated host: `here()` maps a container path to where it is on this machine.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

# ---- paths ---------------------------------------------------------------------------------------------------

OPT_ML = "/opt/ml"
OPT_ML_ENV = "ALLPAIRS_OPT_ML"

# Processing inputs/outputs and the training channel, by the names the definition gives them.
MATRIX, NORMALIZED, SHARDS, ARTIFACT, REGISTRATION = "matrix", "normalized", "shards", "artifact", "registration"
# Queries mode: Preprocess's query input and output, and the training channel of the query chunk files
# (ShardedByS3Key: each host gets some of the files), which is that output's QUERY_CHUNKS folder.
QUERIES, QUERY_CHUNKS = "queries", "chunks"


def processing_input_path(name: str) -> str:
    return f"{OPT_ML}/processing/input/{name}"


def processing_output_path(name: str) -> str:
    return f"{OPT_ML}/processing/output/{name}"


def channel_path(name: str) -> str:
    return f"{OPT_ML}/input/data/{name}"


TRAINING_CONFIG_PATH = f"{OPT_ML}/input/config"  # resourceconfig.json, hyperparameters.json
MODEL_PATH = f"{OPT_ML}/model"
CHECKPOINT_PATH = f"{OPT_ML}/checkpoints"
SCRATCH_PATH = f"{OPT_ML}/processing/scratch"


def here(container_path: str) -> Path:
    """Where a container path is on this machine: itself in a container, re-rooted under ALLPAIRS_OPT_ML locally."""
    root = os.environ.get(OPT_ML_ENV)
    if not root:
        return Path(container_path)
    return Path(root) / container_path[len(OPT_ML):].lstrip("/")


# ---- failures ------------------------------------------------------------------------------------------------

# Where a failing container's reason is read, by job type. Training: /opt/ml/output/failure becomes the job's
# FailureReason (docs: "How Amazon SageMaker AI Processes Training Output"). Processing: /opt/ml/output/message
# becomes the job's ExitMessage, its first 1 KB, and must be UTF-8 or the job fails with a ClientError (docs:
# "Save and Access Metadata Information About Your Processing Job", byoc-metadata).
TRAINING, PROCESSING = "training", "processing"
FAILURE_FILES = {TRAINING: "output/failure", PROCESSING: "output/message"}
MAX_FAILURE_BYTES = 1024


def failure_file(job: str) -> Path:
    return here(f"{OPT_ML}/{FAILURE_FILES[job]}")


def failure_text(reason: str) -> bytes:
    """The reason as the service keeps it: UTF-8, at most 1 KB (cut on a character boundary), one line: runs of
    whitespace (a library's multi-line text, a newline in a file name) become one space, other control and format
    characters (ESC, bidi overrides) are written as escapes, so the line can neither split nor drive a terminal."""
    one_line = " ".join(reason.split())
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in one_line)
    data = escaped.encode("utf-8", "replace")[:MAX_FAILURE_BYTES - 1]
    return data.decode("utf-8", "ignore").encode("utf-8") + b"\n"


# ---- environment -------------------------------------------------------------------------------------------------

TRAINING_JOB_ENV = "TRAINING_JOB_NAME"  # SageMaker sets it in every training container; the local runner too
CHECKPOINT_SECONDS_ENV = "ALLPAIRS_CHECKPOINT_SECONDS"  # the training job's Environment (similarity.checkpoint_seconds)
DEFAULT_CHECKPOINT_SECONDS = 120
PROGRESS_SECONDS_ENV = "ALLPAIRS_PROGRESS_SECONDS"  # cadence of the progress lines; 0: one per finished tile
DEFAULT_PROGRESS_SECONDS = 5.0
BLOCK_ROWS_ENV = "ALLPAIRS_BLOCK_ROWS"  # overrides the grid's block rows (steps/kernel/grid.py): tests, tuning
LOCAL_REGISTRY_ENV = "ALLPAIRS_LOCAL_REGISTRY"  # set: Register writes to this SQLite file, not the Model Registry
HOST_FAULT_ENV = "ALLPAIRS_HOST_FAULT"  # local runner only: a fault the host triggers itself (steps/faults.py)
FAULT_MARKER = "fault injected:"  # a host killed on purpose says so first: the runner restarts it

# ---- the training job's hyperparameters (all strings, as SageMaker passes them) ---------------------------------

TOP_K, MIN_SCORE, MEMORY_BUDGET_MB, THREADS = "top_k", "min_score", "memory_budget_mb", "threads"
HYPERPARAMETERS = (TOP_K, MIN_SCORE, MEMORY_BUDGET_MB, THREADS)
NO_THRESHOLD = -1.0  # min_score at or below it keeps every pair
# Optional: absent is the self-join (every row against every row); "queries" is each query row against the corpus.
MODE = "mode"
ALL_PAIRS_MODE, QUERIES_MODE = "all_pairs", "queries"
MODES = (ALL_PAIRS_MODE, QUERIES_MODE)  # pipeline.yaml's `mode`, the first the default
# Queries mode: whether a query whose id is also a corpus id may have that corpus row as a neighbour.
SELF_RULES = ("exclude-same-id", "keep")  # the first is the default: the self-join's "never its own neighbour"
DEFAULT_QUERY_FILES = 64  # query chunk files: an InstanceCount dividing it gets exactly equal counts of them

# Merge receives every pipeline parameter as --parameter Name=value (for the record) and checks the shards
# against these two: shards of another execution's TopK or MinScore are never merged.
TOP_K_PARAMETER, MIN_SCORE_PARAMETER = "TopK", "MinScore"

# ---- Preprocess's arguments and the registry -------------------------------------------------------------------

NON_FINITE_POLICIES = ("error", "drop")  # NaN/inf values: fail naming them (the default), or drop those rows
DEFAULT_CHUNK_ROWS = 65536  # rows per normalized chunk file (at most: wide rows make smaller chunks)
DEFAULT_PREPROCESS_BUDGET_MB = 512  # Preprocess's buffers (an input batch and its copies, one chunk), sized in bytes

# The input files Preprocess reads, by how a name ends (case-insensitive). CSV and TSV may be compressed
# (pyarrow decompresses by extension); a .tsv is tab-separated, every other text file comma-separated, unless
# input.delimiter (--delimiter) says otherwise.
TEXT_EXTENSIONS = tuple(f"{name}{packed}" for name in (".csv", ".tsv") for packed in ("", ".gz", ".bz2", ".zst"))
INPUT_EXTENSIONS = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", **{ext: "csv" for ext in TEXT_EXTENSIONS}}
INPUT_TYPES = ".npy, .npz (scipy.sparse), .parquet, .csv or .tsv files (CSV and TSV may be compressed: .gz, .bz2, .zst)"


def input_format(name: str) -> str | None:
    """The input format a file name says ("npy", "npz", "parquet", "csv"), or None for a name no reader takes."""
    lower = name.lower()
    return next((fmt for ext, fmt in INPUT_EXTENSIONS.items() if lower.endswith(ext)), None)


def input_delimiter(name: str, delimiter: str | None = None) -> str:
    """What separates a text file's fields: input.delimiter when set, else a tab for .tsv, else a comma."""
    tsv = name.lower().endswith(tuple(ext for ext in TEXT_EXTENSIONS if ext.startswith(".tsv")))
    return delimiter or ("\t" if tsv else ",")


APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")  # the first is the default

# ---- files and their formats -------------------------------------------------------------------------------------

MANIFEST = "manifest.json"
IDS_FILE = "ids.parquet"
REGISTRATION_FILE = "registration.json"
NEIGHBORS_PARQUET, NEIGHBORS_NPY, SCORES_NPY = "neighbors.parquet", "neighbors.npy", "scores.npy"
ROWS_PARQUET, ID_INDEX_PARQUET = "rows.parquet", "id_index.parquet"  # the artifact's rows; its ids, sorted
CORPUS_PARQUET = "corpus.parquet"  # queries mode: the corpus rows the neighbour indices name (`row, id, input_row`)
REPORT_HTML = "report.html"  # the artifact at a glance, for a browser (steps/formats/report.py)
# The result: the same bytes whatever the host count, budget or resume (steps/formats/artifact.py).
ARTIFACT_DATA_FILES = (NEIGHBORS_PARQUET, NEIGHBORS_NPY, SCORES_NPY, ROWS_PARQUET, ID_INDEX_PARQUET)
# Moved into place in this order, the manifest last; the report describes the run too (hosts, times).
ARTIFACT_FILES = (*ARTIFACT_DATA_FILES, REPORT_HTML, MANIFEST)

NORMALIZED_FORMAT = ("allpairs.normalized", 2)  # 2: ids.parquet carries each row's input_row
SHARD_FORMAT = ("allpairs.shard", 2)  # 2: partial lists, each covering some column blocks of the grid
CHECKPOINT_FORMAT = ("allpairs.checkpoint", 2)  # 2: per pass of the grid, its lists and its state
QUERIES_FORMAT = ("allpairs.queries", 1)  # Preprocess -> Similarity (chunk files), Merge (ids, manifest)
ARTIFACT_FORMAT = ("allpairs.artifact", 2)  # 2: self-contained (rows.parquet, id_index.parquet), fixed parquet layout

# ---- progress lines and the training step's metrics ---------------------------------------------------------

# One progress line shape for every step (written by steps/progress.py), parsed by the local runner (ALLPAIRS_FAULTS
# at=P%, the live display, the run's summary) and, in the cloud, by the training step's metric definitions:
#   algo-1: progress 37.5% rows 4608/12288 rows/s 2210 GFLOP/s 28.3 eta 3 s
#   preprocess: progress 12.0% rows 7864/~65536 rows/s 81000 eta 1 s
# `~` marks an estimated total (a CSV's rows before it is read); GFLOP/s only where the work is the kernel's
# (similarity hosts: 2 x corpus rows x dim per row); eta is `?` while no rate is known.
PROGRESS_LINE = re.compile(
    r"progress (?P<percent>\d+(?:\.\d+)?)% rows (?P<done>\d+)/(?P<total>~?\d+) rows/s (?P<rate>\d+)"
    r"(?: GFLOP/s (?P<gflops>\d+(?:\.\d+)?))? eta (?P<eta>\d+|\?) s")


def progress_line(done: int, total: int, rate: float, eta: float | None, gflops: float | None = None,
                  estimated: bool = False) -> str:
    """The line PROGRESS_LINE parses (without its `<host>: ` prefix). An estimated total never shows 100%."""
    percent = 100.0 * done / total if total else 100.0
    if estimated:
        percent = min(percent, 99.9)
    flops = f" GFLOP/s {gflops:.1f}" if gflops is not None else ""
    shown_eta = "?" if eta is None or eta != eta else f"{eta:.0f}"  # eta != eta: NaN
    return (f"progress {percent:.1f}% rows {done}/{'~' if estimated else ''}{total} rows/s {rate:.0f}{flops} "
            f"eta {shown_eta} s")


# The training step's AlgorithmSpecification.MetricDefinitions (at most 40 per job; regex at most 500 characters):
# SageMaker searches each host's output with each regex and charts the first group, per host (CloudWatch
# namespace /aws/sagemaker/TrainingJobs, dimension Host = <training job>/algo-N). Plain regex syntax common to
# Python's and Java's dialects; tests/test_progress.py runs the compiled ones on lines real hosts printed.
METRICS_NAMESPACE = "/aws/sagemaker/TrainingJobs"
METRIC_DEFINITIONS = (
    ("progress_percent", r"progress (\d+(?:\.\d+)?)% rows "),
    ("rows_done", r"progress \d+(?:\.\d+)?% rows (\d+)/"),
    ("rows_per_second", r" rows/s (\d+) GFLOP/s "),
    ("gflops", r" GFLOP/s (\d+(?:\.\d+)?) eta "),
    ("eta_seconds", r" GFLOP/s \S+ eta (\d+) s"),
)

# ---- host identity -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One training host, as /opt/ml/input/config/resourceconfig.json names it."""

    name: str
    hosts: list[str]
    instance_type: str | None = None  # current_instance_type, when SageMaker gives it

    @property
    def index(self) -> int:
        return self.hosts.index(self.name)

    def share(self, rows: int) -> tuple[int, int]:
        """This host's even share of the rows: [i*N//H, (i+1)*N//H)."""
        h = len(self.hosts)
        return self.index * rows // h, (self.index + 1) * rows // h


def read_host(path: Path) -> Host:
    """The host's identity; ValueError (the reason) if the file is not a resourceconfig.json."""
    cfg = json.loads(path.read_text())
    host = Host(cfg["current_host"], list(cfg["hosts"]), cfg.get("current_instance_type"))
    host.index  # noqa: B018 - raises ValueError if current_host is not among hosts
    return host
