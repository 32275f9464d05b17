"""Similarity step: the image's `train`. Each host computes the top-k neighbours of its even share of rows.

Reads the SageMaker training contract (resourceconfig.json, hyperparameters.json, the `normalized` channel)
and writes host-unique shard files to /opt/ml/model. See docs/container-contract.md, section 2.

Resume: completed rows are checkpointed under /opt/ml/checkpoints, keyed by row range
(steps/formats/checkpoints.py says how and why); a restarted host copies what is there and computes only the
rest. SIGTERM (spot's warning, StopTrainingJob) saves the completed rows before the host exits.

Refused before any work: InstanceCount above the number of rows, and a matrix that with memory_budget_mb does
not fit in this host's available memory (every host memory-maps the whole normalized matrix); the message
names the budget or an instance type that would fit. The shard JSON records the training job
(TRAINING_JOB_NAME, set by SageMaker and the local runner), so Merge can refuse a shard of another job.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .contract import (CHECKPOINT_PATH, HYPERPARAMETERS, MEMORY_BUDGET_MB, MIN_SCORE, MODEL_PATH, NO_THRESHOLD,
                       NORMALIZED, THREADS, TOP_K, TRAINING, TRAINING_CONFIG_PATH, TRAINING_JOB_ENV, Host, channel_path,
                       here, read_host)
from .errors import StepError, Terminated, run_step
from .faults import read_fault
from .formats import checkpoints, shards
from .formats.normalized import load_normalized, read_manifest
from .instances import PROGRAM_MB, facts
from .io import atomic_path
from .kernel import Corpus, KernelConfig, QueryRows, top_k
from .progress import Progress

# Memory (GiB) of common training instance types, smallest first: what the memory check suggests (the one
# table of instance facts, steps/instances.json, which the planner reads too).
INSTANCE_MEMORY_GIB = [(t.name, t.memory_gib) for t in facts().types]


@dataclass(frozen=True)
class Settings:
    top_k: int
    min_score: float | None  # None: every pair is kept
    memory_budget_mb: int
    threads: int

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
    return Settings(k, None if min_score <= NO_THRESHOLD else min_score, budget, threads)


def check_instance_count(hosts: int, rows: int) -> None:
    """Every similarity host needs at least one row."""
    if hosts > max(rows, 1):
        most = max(rows, 1)
        raise StepError(f"InstanceCount={hosts} is larger than the number of rows ({rows}): use at most {most} "
                        f"instance{'s' if most > 1 else ''} (--param InstanceCount={most})")


def compute_shard(normalized_dir: Path, host: Host, settings: Settings, out_dir: Path,
                  checkpoint_dir: Path | None = None, available: int | None = None) -> dict:
    """Compute this host's rows and write its shard files (data first, the JSON that vouches for them last).
    Rows found in verified checkpoints are copied, not computed; `available` is memory in bytes (None: ask)."""
    check_fits(normalized_dir, host, settings, available_memory() if available is None else available)
    data = load_normalized(normalized_dir)
    corpus = Corpus(data.chunks)
    check_instance_count(len(host.hosts), data.rows)
    start, stop = host.share(data.rows)
    names = shards.names(host.name)
    k = settings.top_k
    log = host_log(host)
    expected = {"format": checkpoints.FORMAT, "version": checkpoints.VERSION, "fingerprint": data.fingerprint,
                "k": k, "min_score": settings.min_score}
    key = checkpoints.checkpoint_key(data.fingerprint, k, settings.min_score)
    found = checkpoints.scan(checkpoint_dir, key, expected, (start, stop), log) if checkpoint_dir else checkpoints.Scan()
    pieces = checkpoints.plan_cover((start, stop), found.usable)
    began, cpu_began = time.time(), time.process_time()
    from numpy.lib.format import open_memmap

    with atomic_path(out_dir / names["neighbors"]) as tmp_n, atomic_path(out_dir / names["scores"]) as tmp_s:
        neighbors = open_memmap(tmp_n, mode="w+", dtype=np.int64, shape=(stop - start, k))
        scores = open_memmap(tmp_s, mode="w+", dtype=np.float32, shape=(stop - start, k))
        writer = checkpoints.Writer(checkpoint_dir, key, {**expected, "host": host.name}, neighbors, scores, start,
                                    checkpoints.read_interval(), log, read_fault()) if checkpoint_dir else None
        resumed = fill_shard(corpus, pieces, settings, neighbors, scores, start, writer, log)
        neighbors.flush()
        scores.flush()
        del neighbors, scores, writer
    return shards.write_meta(out_dir, host.name, host.hosts, start, stop, k, settings.min_score, data.fingerprint,
                             os.environ.get(TRAINING_JOB_ENV), resumed, round(time.time() - began, 3),
                             round(time.process_time() - cpu_began, 3))  # CPU: every thread of this process


def fill_shard(corpus, pieces, settings: Settings, neighbors, scores, base: int, writer, log) -> int:
    """Copy checkpointed pieces, compute the others (checkpointing as rows complete); returns rows copied.

    A stop (SIGTERM, Ctrl-C) or a failure abandons the queued kernel work first (closing the generator), then
    checkpoints every row already final, so the host exits within seconds with nothing finished lost."""
    resumed, zero = 0, None
    progress = Progress(sum(hi - lo for lo, hi, _ in pieces), 2.0 * corpus.rows * corpus.dim, log)
    try:
        for lo, hi, checkpoint in pieces:
            if checkpoint is not None:
                checkpoints.copy_rows(checkpoint, lo, hi, neighbors, scores, base)
                log(f"resumed rows [{lo}, {hi}) from checkpoint {checkpoint.path.name}")
                resumed += hi - lo
                progress.resumed(hi - lo)
                continue
            zero = corpus.zero_mask() if zero is None else zero  # once, however many gaps
            with contextlib.closing(top_k(corpus, QueryRows(lo, hi), settings.kernel(), zero)) as tiles:
                for first, nb, sc in tiles:
                    neighbors[first - base: first - base + len(nb)] = nb
                    scores[first - base: first - base + len(sc)] = sc
                    if writer:
                        writer.completed(first, first + len(nb))
                    progress.computed_rows(len(nb))
            if writer:
                writer.save()
    except Terminated:
        if writer:  # the rows already final are kept for the resume
            writer.save()
        saved = f"{writer.rows_saved + resumed} of {progress.total} rows of this host are in checkpoints" if writer else ""
        raise Terminated(f"{saved}; a restart resumes from them" if saved else "") from None
    except BaseException:
        if writer:  # failed or interrupted: the rows already final are kept for the resume
            writer.save()
        raise
    return resumed


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
    message = memory_message(rows, dim, settings.memory_budget_mb, available, host)
    if message:
        raise StepError(message)


def memory_message(rows: int, dim: int, budget_mb: int, available: int | None, host: Host) -> str | None:
    """The one-line refusal when rows x dim float32 + budget + PROGRAM_MB exceed `available` bytes, else None."""
    if available is None:
        return None
    matrix_mb = -(-rows * dim * 4 // (1 << 20))
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
    return (f"{where}: the normalized matrix ({rows} rows x {dim} float32 = {matrix_mb} MB) plus "
            f"memory_budget_mb={budget_mb} and {PROGRAM_MB} MB for the program need {need_mb} MB, but only "
            f"{have_mb} MB are available; {fix}")


def main(argv: Sequence[str]) -> None:
    config = here(TRAINING_CONFIG_PATH)
    host = host_identity(config / "resourceconfig.json")
    settings = read_settings(config / "hyperparameters.json")
    meta = compute_shard(here(channel_path(NORMALIZED)), host, settings, here(MODEL_PATH), here(CHECKPOINT_PATH))
    print(f"{host.name}: rows [{meta['start']}, {meta['stop']}) done in {meta['seconds']} s "
          f"({meta['resumed_rows']} resumed from checkpoints)", flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a training job's is read."""
    return run_step("similarity", main, argv, job=TRAINING)


if __name__ == "__main__":
    sys.exit(run())
