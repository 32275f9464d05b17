"""Similarity step: the image's `train`. Each host computes its even share of the pairs of rows, every pair once
across all hosts, and writes exact partial top-k lists that Merge combines.

Reads the SageMaker training contract (resourceconfig.json, hyperparameters.json, the `normalized` channel)
and writes host-unique shard files to /opt/ml/model. See docs/container-contract.md, section 2.

Resume: a host's finished lists and the state of its pass in progress are checkpointed under
/opt/ml/checkpoints (steps/formats/checkpoints.py says how and why; steps/share.py what is reused); SIGTERM
(spot's warning, StopTrainingJob) checkpoints before the host exits.

Refused before any work: InstanceCount above the number of rows, and a matrix that with memory_budget_mb does
not fit in this host's available memory (every host memory-maps the whole normalized matrix); the message
names the budget or an instance type that would fit. The shard JSON records the training job
(TRAINING_JOB_NAME, set by SageMaker and the local runner), so Merge can refuse a shard of another job.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from . import share
from .contract import (ALL_PAIRS_MODE, CHECKPOINT_PATH, HYPERPARAMETERS, MEMORY_BUDGET_MB, MIN_SCORE, MODE,
                       MODEL_PATH, NO_THRESHOLD, NORMALIZED, QUERIES, QUERIES_MODE, THREADS, TOP_K, TRAINING,
                       TRAINING_CONFIG_PATH, Host, channel_path, here, read_host)
from .errors import StepError, run_step
from .formats import queries as query_format
from .formats.normalized import load_normalized, read_manifest
from .instances import PROGRAM_MB, facts
from .kernel import Corpus, KernelConfig
from .kernel.sparse import SparseCorpus

# Memory (GiB) of common training instance types, smallest first: what the memory check suggests (the one
# table of instance facts, steps/instances.json, which the planner reads too).
INSTANCE_MEMORY_GIB = [(t.name, t.memory_gib) for t in facts().types]


@dataclass(frozen=True)
class Settings:
    top_k: int
    min_score: float | None  # None: every pair is kept
    memory_budget_mb: int
    threads: int
    mode: str = ALL_PAIRS_MODE  # or QUERIES_MODE: the query rows of the `queries` channel against the corpus

    def kernel(self) -> KernelConfig:
        return KernelConfig(self.top_k, self.min_score, self.memory_budget_mb << 20, self.threads)


def host_identity(path: Path) -> Host:
    try:
        return read_host(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{path}: not a valid resourceconfig.json ({exc}); SageMaker writes it for every "
                        "training host: run this program as a training job or through `python -m pipeline run`")


def read_settings(path: Path) -> Settings:
    """The job's hyperparameters; every one is required (the compiled definition always passes them)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StepError(f"{path}: not a readable hyperparameters.json ({exc}); SageMaker writes it for every "
                        "training host: run this program as a training job or through `python -m pipeline run`")
    missing = [name for name in HYPERPARAMETERS if name not in raw]
    if missing:
        raise StepError(f"{path}: hyperparameter {', '.join(missing)} missing; the training job must pass "
                        f"{', '.join(HYPERPARAMETERS)} (compile the pipeline with `python -m pipeline definition`)")

    def number(name, kind):
        value = raw[name]
        try:
            return kind(json.loads(value) if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise StepError(f"{path}: hyperparameter {name}={value!r} is not a valid {kind.__name__}")

    k = number(TOP_K, int)
    min_score = number(MIN_SCORE, float)
    budget = number(MEMORY_BUDGET_MB, int)
    threads = number(THREADS, int)
    if k < 1:
        raise StepError(f"TopK={k}: must be at least 1; set the TopK parameter to the number of neighbours wanted")
    if not -1.0 <= min_score <= 1.0:
        raise StepError(f"MinScore={min_score}: cosine scores lie in [-1, 1]; use a threshold in that range "
                        "(-1 disables it)")
    if budget < 16:
        raise StepError(f"memory_budget_mb={budget}: must be at least 16 (MB); raise similarity.memory_budget_mb")
    mode = raw.get(MODE, ALL_PAIRS_MODE)
    if mode not in (ALL_PAIRS_MODE, QUERIES_MODE):
        raise StepError(f"{path}: hyperparameter {MODE}={mode!r}: must be {ALL_PAIRS_MODE} or {QUERIES_MODE} "
                        "(compile the pipeline with `python -m pipeline definition`)")
    return Settings(k, None if min_score <= NO_THRESHOLD else min_score, budget, threads, mode)


def check_instance_count(hosts: int, rows: int) -> None:
    """Every similarity host needs at least one row."""
    if hosts > max(rows, 1):
        most = max(rows, 1)
        raise StepError(f"InstanceCount={hosts} is larger than the number of rows ({rows}): use at most {most} "
                        f"instance{'s' if most > 1 else ''} (--param InstanceCount={most})")


def compute_shard(normalized_dir: Path, host: Host, settings: Settings, out_dir: Path,
                  checkpoint_dir: Path | None = None, available: int | None = None) -> dict:
    """Compute this host's share of the pairs and write its shard files (steps/share.py says how); `available`
    is memory in bytes (None: ask)."""
    check_fits(normalized_dir, host, settings, available_memory() if available is None else available)
    data = load_normalized(normalized_dir)
    check_instance_count(len(host.hosts), data.rows)
    log = host_log(host)
    top_k, settings = settings.top_k, fit_top_k(settings, data.max_neighbors, log)
    config = settings.kernel()
    corpus = SparseCorpus(data.chunks, config.budget_bytes) if data.sparse else Corpus(data.chunks)
    if data.sparse:
        log(corpus.describe())
    return share.compute(corpus, data.fingerprint, host, config, out_dir, checkpoint_dir, log, top_k)


def compute_query_shard(normalized_dir: Path, queries_dir: Path, host: Host, settings: Settings, out_dir: Path,
                        checkpoint_dir: Path | None = None, available: int | None = None) -> dict:
    """Queries mode: the query chunk files this host received (ShardedByS3Key: any of them, maybe none), each
    query row against the whole corpus; the shard lists the files it covered. More hosts than files is allowed:
    a host without any writes an empty shard saying so, which Merge accepts."""
    check_fits(normalized_dir, host, settings, available_memory() if available is None else available)
    data = load_normalized(normalized_dir)
    log = host_log(host)
    files = query_format.chunk_files(queries_dir)
    chunks = [query_format.read_chunk(path, data.rows, data.dim) for path in files]
    for c in chunks[1:]:
        if (c.fingerprint, c.rows) != (chunks[0].fingerprint, chunks[0].rows):
            raise StepError(f"{c.path}: from another query set than {chunks[0].path.name} (fingerprint "
                            f"{c.fingerprint[:12]}, not {chunks[0].fingerprint[:12]}); the queries channel must hold "
                            "one Preprocess output's queries/chunks: rerun the Preprocess step")
    if chunks:
        log(f"received {len(chunks)} query chunk file(s) of {chunks[0].rows} query rows: "
            f"{', '.join(c.path.name for c in chunks)}")
    else:
        log("received no query chunk file (ShardedByS3Key gives each host about 1/n of the files, and there are "
            "fewer files than hosts): writing an empty shard")
    most = max(1, data.rows - int(data.manifest.get("zero_rows", 0)))  # no corpus row is a query row
    top_k, settings = settings.top_k, fit_top_k(settings, most, log)
    return share.compute_queries(Corpus(data.chunks), data.fingerprint, chunks, host, settings.kernel(), out_dir,
                                 checkpoint_dir, log, top_k)


def fit_top_k(settings: Settings, max_neighbors: int, log) -> Settings:
    """TopK beyond what any row can have would only add columns of padding (3000 rows with TopK=5000: 528 MB of
    it): k becomes that most. The rows are known here, not when the pipeline starts, and every host computes the
    same value from the same manifest, so the shards agree; Merge notes it in the artifact's manifest."""
    if settings.top_k <= max_neighbors:
        return settings
    log(f"TopK={settings.top_k} is more than any row can have ({max_neighbors}): computing {max_neighbors} "
        "neighbours per row")
    return replace(settings, top_k=max_neighbors)


def host_log(host: Host):
    def log(line: str) -> None:
        print(f"{host.name}: {line}", flush=True)
    return log


# ---- the memory check -------------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes this host can use now: MemAvailable from /proc/meminfo, else sysconf; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(normalized_dir: Path, host: Host, settings: Settings, available: int | None) -> None:
    """Refuse, before any work, a matrix that with the score budget does not fit in this host's memory."""
    try:
        manifest = read_manifest(normalized_dir)
    except StepError:
        return  # load_normalized reports a missing or broken manifest with its own message
    rows, dim = int(manifest["rows"]), int(manifest["dim"])
    sparse = None
    if manifest.get("layout") == "sparse":
        # CSR in memory, 24 bytes a value: the chunks as read (value and column, 8), the corpus's copy with its
        # columns renumbered (8) and those columns as int64 for the compiled loops (8); 24 a row for row starts
        nnz = int(manifest.get("nnz", 0))
        sparse = (nnz * 24 + rows * 24 + 8, f"{rows} rows x {dim}, {nnz} values in CSR")
    message = memory_message(rows, dim, settings.memory_budget_mb, available, host, sparse)
    if message:
        raise StepError(message)


def memory_message(rows: int, dim: int, budget_mb: int, available: int | None, host: Host,
                   sparse: tuple[int, str] | None = None) -> str | None:
    """The one-line refusal when rows x dim float32 (or, `sparse`, (bytes, what) of the CSR matrix) + budget +
    PROGRAM_MB exceed `available` bytes, else None."""
    if available is None:
        return None
    matrix_mb = -(-(sparse[0] if sparse else rows * dim * 4) // (1 << 20))
    need_mb = matrix_mb + budget_mb + PROGRAM_MB
    have_mb = available // (1 << 20)
    if need_mb <= have_mb:
        return None
    where = f"host {host.name}" + (f" ({host.instance_type})" if host.instance_type else "")
    fits = [t.name for t in facts().types if t.usable_mb >= need_mb]  # 10% for the OS
    smaller = have_mb - matrix_mb - PROGRAM_MB
    fixes = [f"use an InstanceType with more memory (at least {fits[0]}, {dict(INSTANCE_MEMORY_GIB)[fits[0]]} GiB)"]\
        if fits else []
    if smaller >= 16:
        fixes.append(f"lower similarity.memory_budget_mb to {smaller}")
    fix = ", or ".join(fixes) or (f"the matrix alone needs more memory than {INSTANCE_MEMORY_GIB[-1][0]} has: "
                                  "reduce its dimension (e.g. with PCA) or its rows")
    what = sparse[1] if sparse else f"{rows} rows x {dim} float32"
    return (f"{where}: the normalized matrix ({what} = {matrix_mb} MB) plus "
            f"memory_budget_mb={budget_mb} and {PROGRAM_MB} MB for the program need {need_mb} MB, but only "
            f"{have_mb} MB are available; {fix}")


def main(argv: Sequence[str]) -> None:
    config = here(TRAINING_CONFIG_PATH)
    host = host_identity(config / "resourceconfig.json")
    settings = read_settings(config / "hyperparameters.json")
    if settings.mode == QUERIES_MODE:
        meta = compute_query_shard(here(channel_path(NORMALIZED)), here(channel_path(QUERIES)), host, settings,
                                   here(MODEL_PATH), here(CHECKPOINT_PATH))
    else:
        meta = compute_shard(here(channel_path(NORMALIZED)), host, settings, here(MODEL_PATH), here(CHECKPOINT_PATH))
    print(f"{host.name}: {len(meta['lists'])} partial lists ({meta['rows']} rows) done in {meta['seconds']} s "
          f"({meta['resumed_steps']} steps resumed from checkpoints)", flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a training job's is read."""
    return run_step("similarity", main, argv, job=TRAINING)


if __name__ == "__main__":
    sys.exit(run())
