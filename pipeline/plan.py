"""Sizing a job before anything is paid for: `python -m pipeline plan`, and the fit check `run` and `start` make
before their first step.

From the matrix's shape (read cheaply, steps/input_shape.py, or given), k and the spec's settings:

- per similarity host, memory: the normalized matrix (every host memory-maps all of it), the score tiles and
  candidate heaps (similarity.memory_budget_mb), its output shard (its partial lists, memory-mapped while
  written) and the program; against the instance type's memory less 10% (steps/instances.py, the facts the
  hosts' own check uses);
- the shards: every pair of rows is computed once, by one host (steps/kernel/grid.py), so a host's partial
  lists hold its own rows and, for the rows of the blocks its pairs reach beyond its share (at most half the
  corpus), the mirror lists: about N/H + min(N/2, N - N/H) rows of k x 12 bytes per host, (1 + H/2) x N in all;
- disk per step, against its volume_gb: Preprocess holds the input and the normalized matrix; a similarity
  host the matrix (its channel), its shard and, after a restart, every host's checkpoints (SageMaker copies the
  whole checkpoint prefix to each host: every host's lists, about the shards); Merge the matrix (its
  `normalized` input), the shards and the artifact; Register the artifact;
- run time of the similarity step: a host's share of the pairs, N x N x dim / H floating point operations (each
  pair's product once, as the progress lines count them), at the kernel throughput measured here
  (steps/calibrate.py) per physical core, times the instance's cores. Not counted: start-up and the channel's
  download;
- cost: hosts x hours x the on-demand price, and spot at the data file's assumed saving.

Sizes are in GB of 10^9 bytes; a volume_gb of V holds V x 2^30 bytes less 5% for the file system.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import UsageError
from steps.instances import PROGRAM_MB, Facts, InstanceType, facts

MB, GB = 10**6, 10**9
VOLUME_USABLE = 0.95  # of a volume's bytes, after the file system's own
SHARD_BYTES_PER_NEIGHBOUR = 12  # int64 index + float32 score
MERGE_BATCH_BYTES = 120 * MB  # Merge's batch (about 2**20 edges) with its parquet table
PREPROCESS_BATCH_BYTES = 64 << 20  # one float64 input batch (steps/readers/base.py)
REPORT_BYTES = 100_000
MAX_HOSTS = 1000  # InstanceCount's range (pipeline/spec/parameters.py)


@dataclass(frozen=True)
class Job:
    rows: int
    dim: int
    k: int
    input_bytes: int  # what Preprocess downloads
    id_bytes: int = 16  # per id: 8 for int64 ids; string ids are a guess
    exact: bool = True  # False: the rows are an estimate (a CSV's)
    source: str = ""  # where the shape came from, said in the plan


@dataclass(frozen=True)
class Settings:
    """What the spec fixes (not a runtime parameter)."""

    memory_budget_mb: int
    volume_gb: dict  # step name -> GB
    processing_types: dict  # step name -> instance type name
    max_runtime_seconds: int
    chunk_rows: int = 65536
    preprocess_budget_mb: int = 512  # preprocess.memory_budget_mb: its batch and chunk each take at most half

    @classmethod
    def of(cls, spec) -> "Settings":
        return cls(spec.similarity.memory_budget_mb,
                   {"Preprocess": spec.preprocess.volume_gb, "Similarity": spec.similarity.volume_gb,
                    "Merge": spec.merge.volume_gb, "Register": spec.merge.volume_gb},
                   {"Preprocess": spec.preprocess.instance_type, "Merge": spec.merge.instance_type,
                    "Register": spec.merge.instance_type},
                   spec.similarity.max_runtime_seconds, spec.preprocess.chunk_rows, spec.preprocess.memory_budget_mb)


VOLUME_KEYS = {"Preprocess": "preprocess.volume_gb", "Similarity": "similarity.volume_gb", "Merge": "merge.volume_gb",
               "Register": "merge.volume_gb"}


def job_from_size(rows: int, dim: int, k: int, density: float = 1.0) -> Job:
    """A job described by its size alone: float32 values if dense, CSR (value + column, 4 bytes each, and row
    offsets) below density 1."""
    if density >= 1.0:
        input_bytes = rows * dim * 4
    else:
        input_bytes = int(rows * dim * density * 8 + (rows + 1) * 8)
    return Job(rows, dim, k, input_bytes, source=f"given: {rows:,} rows x {dim}, density {density:g}")


def job_of_input(uri: str, k: int, id_column: str | None, s3: Callable | None = None, *,
                 vector_column: str | None = None, delimiter: str | None = None) -> tuple[Job | None, str]:
    """The job of the matrix at `uri` (a path, file:// or s3://), its shape read cheaply; (None, why) when it
    cannot be. `s3(uri)` lists an S3 input as (files, byte-range reader) (pipeline/aws.py); without it, S3 inputs
    are not read."""
    from steps.input_shape import ShapeUnknown, local_input, read_shape

    try:
        if uri.startswith("s3://"):
            if s3 is None:
                return None, f"{uri} is on S3 and this command reads no S3 input before running"
            files, read = s3(uri)
        else:
            files, read = local_input(Path(uri[len("file://"):] if uri.startswith("file://") else uri))
        shape = read_shape(files, read, id_column, vector_column=vector_column, delimiter=delimiter)
    except (ShapeUnknown, UsageError) as exc:
        return None, f"{uri}: {exc}"
    except Exception as exc:  # AwsError and the like: say why, the hosts still check what they can
        return None, f"{uri}: {exc}"
    return Job(shape.rows, shape.dim, k, shape.bytes, 8 if shape.format == "npy" else 16, shape.exact,
               f"{uri}: {shape.describe()}"), ""


def share(rows: int, hosts: int) -> int:
    """The largest host's rows: [i*N//H, (i+1)*N//H)."""
    return -(-rows // hosts)


def normalized_bytes(job: Job) -> int:
    return job.rows * job.dim * 4 + job.rows * job.id_bytes


def list_rows(job: Job, hosts: int) -> int:
    """The rows of the largest host's partial lists: its own rows and the mirrors of its pairs beyond its share
    (the grid's windows reach half the corpus past a host's rows)."""
    own = share(job.rows, hosts)
    return own + min(job.rows // 2, job.rows - own)


def host_shard_bytes(job: Job, hosts: int) -> int:
    return list_rows(job, hosts) * min(job.k, max(job.rows - 1, 1)) * SHARD_BYTES_PER_NEIGHBOUR


def shards_bytes(job: Job, hosts: int) -> int:
    """Every host's shard (what Merge reads, and what the checkpoints hold once every pass is done)."""
    lists = job.rows + (hosts * min(job.rows // 2, job.rows - share(job.rows, hosts)) if hosts > 1 else 0)
    return lists * min(job.k, max(job.rows - 1, 1)) * SHARD_BYTES_PER_NEIGHBOUR


def artifact_parts(job: Job) -> dict[str, int]:
    """The artifact's files; the edge list at most (parquet compresses it; padding is not written)."""
    k = min(job.k, max(job.rows - 1, 1))
    index = 4 if job.rows < 2**31 else 8
    return {"neighbors.npy": job.rows * k * index, "scores.npy": job.rows * k * 4,
            "neighbors.parquet": job.rows * k * (2 * job.id_bytes + 8), "report.html": REPORT_BYTES}


def host_memory(job: Job, hosts: int, budget_mb: int) -> dict[str, int]:
    """Bytes one similarity host holds, by part."""
    return {"matrix": job.rows * job.dim * 4, "blocks": budget_mb * MB,
            "output": host_shard_bytes(job, hosts),
            "program": PROGRAM_MB * MB}


def step_memory(job: Job, settings: Settings) -> dict[str, int]:
    """Bytes the processing steps hold at most: Preprocess a batch, a chunk and a hash per id; Merge the ids,
    the report's counter per row and a batch."""
    buffers = min(PREPROCESS_BATCH_BYTES, settings.preprocess_budget_mb * MB // 2) + \
        min(settings.chunk_rows * job.dim * 4, settings.preprocess_budget_mb * MB // 2)
    return {"Preprocess": buffers + 8 * job.rows + PROGRAM_MB * MB,
            "Merge": job.rows * (job.id_bytes + 4) + MERGE_BATCH_BYTES + PROGRAM_MB * MB}


def disk_parts(job: Job, hosts: int) -> dict[str, dict[str, int]]:
    """Bytes each step stores on its volume, by part."""
    normalized, shards, artifact = normalized_bytes(job), shards_bytes(job, hosts), sum(artifact_parts(job).values())
    own = host_shard_bytes(job, hosts)
    return {"Preprocess": {"the input": job.input_bytes, "the normalized matrix": normalized},
            "Similarity": {"the normalized matrix": normalized, "its shard": own,
                           "every host's checkpoints (after a restart)": shards},
            "Merge": {"the normalized matrix": normalized, "the shards": shards, "the artifact": artifact},
            "Register": {"the artifact": artifact}}


def volume_bytes(gb: int) -> int:
    return int(gb * 2**30 * VOLUME_USABLE)


def volume_needed(stored: int) -> int:
    """The smallest volume_gb that holds `stored` bytes."""
    return max(1, math.ceil(stored / (2**30 * VOLUME_USABLE)))


@dataclass(frozen=True)
class Throughput:
    """The kernel per physical core: seconds per GFLOP, as the progress lines count them."""

    seconds_per_gflop: float

    @classmethod
    def flat(cls, gflops_per_core: float) -> "Throughput":
        return cls(1.0 / gflops_per_core)

    @classmethod
    def measured(cls, calibration: dict) -> "Throughput":
        """From steps/calibrate.py: GFLOP/s measured on `cores` cores."""
        return cls.flat(calibration["gflops"] / calibration["cores"])


def similarity_seconds(job: Job, hosts: int, cores: int, speed: Throughput) -> float:
    """A host's compute time (the step's wall time, start-up and download aside): its share of the pairs."""
    return job.rows * job.rows * job.dim / hosts / 1e9 * speed.seconds_per_gflop / cores


# ---- candidates ---------------------------------------------------------------------------------------------


@dataclass
class Estimate:
    type: InstanceType
    hosts: int
    memory: dict[str, int]  # one host's, by part
    seconds: float
    on_demand: float  # USD
    spot: float

    @property
    def memory_need(self) -> int:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.memory_need <= self.type.usable_mb * MB


def estimate(job: Job, settings: Settings, kind: InstanceType, hosts: int, speed: Throughput,
             known: Facts) -> Estimate:
    seconds = similarity_seconds(job, hosts, kind.cores, speed)
    cost = hosts * seconds / 3600 * kind.on_demand_per_hour
    return Estimate(kind, hosts, host_memory(job, hosts, settings.memory_budget_mb), seconds, cost,
                    cost * (1 - known.spot_savings))


def smallest_count(job: Job, settings: Settings, kind: InstanceType, speed: Throughput, target: float,
                   known: Facts) -> Estimate | None:
    """The fewest hosts of `kind` that fit in memory and finish within `target` seconds (or, when none does,
    the most hosts allowed); None when no count fits in memory."""
    most = max(1, min(MAX_HOSTS, job.rows))
    one = similarity_seconds(job, 1, kind.cores, speed)
    hosts = min(most, max(1, math.ceil(one / target)))
    while hosts < most and similarity_seconds(job, hosts, kind.cores, speed) > target:
        hosts += 1
    found = estimate(job, settings, kind, hosts, speed, known)
    while not found.fits and hosts < most:  # more hosts: a smaller output each
        hosts = min(most, hosts * 2)
        found = estimate(job, settings, kind, hosts, speed, known)
    return found if found.fits else None


# ---- the fit check ------------------------------------------------------------------------------------------


@dataclass
class Fit:
    problems: list[str] = field(default_factory=list)  # each one line: what does not fit, and the fix
    notes: list[str] = field(default_factory=list)


def check_fit(job: Job, settings: Settings, instance_type: str, hosts: int, where: Callable[[str], str],
              known: Facts | None = None) -> Fit:
    """What would fail for lack of memory or disk with these parameters; `where(yaml path)` names the spec line."""
    known = known or facts()
    fit = Fit()
    kind = known.get(instance_type)
    if kind is None:
        fit.notes.append(f"InstanceType={instance_type} is not in steps/instances.json: its memory is not checked "
                         "before the run (each similarity host checks its own)")
    else:
        found = estimate(job, settings, kind, hosts, Throughput.flat(1.0), known)
        if not found.fits:
            fit.problems.append(memory_problem(job, settings, found, known))
    for step, stored in step_memory(job, settings).items():
        kind_of_step = known.get(settings.processing_types.get(step, ""))
        if kind_of_step and stored > kind_of_step.usable_mb * MB:
            fit.problems.append(f"{step} needs about {stored / MB:,.0f} MB of memory (ids and batches), more than the "
                                f"{kind_of_step.usable_mb:,} MB {kind_of_step.name} leaves it: choose a larger "
                                f"{step.lower()}.instance_type")
    for step, parts in disk_parts(job, hosts).items():
        stored = sum(parts.values())
        gb = settings.volume_gb[step]
        if stored > volume_bytes(gb):
            key = VOLUME_KEYS[step]
            listed = ", ".join(f"{name} {size / GB:,.1f} GB" for name, size in parts.items())
            who = "each similarity host" if step == "Similarity" else step
            fit.problems.append(f"{where(key)}: {key} is {gb} but {who} stores {stored / GB:,.1f} GB ({listed}): "
                                f"set {key} to at least {volume_needed(stored)}")
    return fit


def memory_problem(job: Job, settings: Settings, found: Estimate, known: Facts) -> str:
    parts = found.memory
    have = found.type.usable_mb
    larger = next((t for t in known.types if estimate(job, settings, t, found.hosts, Throughput.flat(1.0), known).fits),
                  None)
    fix = (f"use InstanceType={larger.name} ({larger.memory_gib} GiB) or larger" if larger else
           "no instance type in steps/instances.json holds it: reduce the matrix's dimension or rows")
    return (f"InstanceType={found.type.name}: each of the {found.hosts} similarity host"
            f"{'s' if found.hosts != 1 else ''} needs {found.memory_need / MB:,.0f} MB (the normalized matrix "
            f"{parts['matrix'] / MB:,.0f} MB, similarity.memory_budget_mb {settings.memory_budget_mb:,}, its output "
            f"{parts['output'] / MB:,.0f} MB, {PROGRAM_MB} MB for the program), more than the {have:,} MB "
            f"{found.type.name} leaves to a job ({found.type.memory_gib} GiB less 10%): {fix}")


def enforce(fit: Fit, exact: bool, say: Callable[[str], None] | None) -> None:
    """Refuse (UsageError) what cannot fit when the shape is exact; with an estimated shape, only warn."""
    for note in fit.notes:
        if say:
            say(f"note: {note}")
    if not fit.problems:
        return
    if exact:
        raise UsageError(f"{fit.problems[0]} (nothing was started; `python -m pipeline plan` shows what fits)")
    for problem in fit.problems:
        if say:
            say(f"note: with the estimated shape, this may not fit: {problem}")


# ---- calibration ----------------------------------------------------------------------------------------------


def calibrate(dim: int, k: int, budget_mb: int, rows: int | None = None, seconds: float = 1.0) -> dict:
    """The kernel's throughput here, from steps/calibrate.py run as a subprocess (pipeline/ never imports the
    kernel)."""
    root = Path(find_spec("steps").origin).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "steps.calibrate", "--dim", str(dim), "--k", str(k), "--memory-budget-mb",
            str(budget_mb), "--seconds", str(seconds)] + (["--rows", str(rows)] if rows else [])
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise UsageError(f"calibration failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}; pass "
                         "--gflops-per-core to skip it")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the plan, as text --------------------------------------------------------------------------------------


def plan_lines(job: Job, settings: Settings, candidates: Sequence[str], chosen: tuple[str, int], speed: Throughput,
               target: float, where: Callable[[str], str], calibration: str, known: Facts | None = None,
               local_cores: int | None = None) -> list[str]:
    """`local_cores`: this machine's, to say how long `python -m pipeline run` would compute here."""
    known = known or facts()
    lines = [f"input: {job.source}; k {job.k}",
             f"kernel: {calibration}",
             f"prices: {known.region}, {known.currency}, as of {known.date} (steps/instances.json); spot assumed "
             f"{known.spot_savings:.0%} below on-demand",
             "sizes: " + ", ".join(f"{name} {size_text(size)}" for name, size in [
                 ("normalized matrix", normalized_bytes(job)),
                 (f"shards of {chosen[1]} host{'s' if chosen[1] != 1 else ''}", shards_bytes(job, chosen[1])),
                 ("artifact", sum(artifact_parts(job).values()))]) + " (its edge list at most, before compression)",
             "", "disk per step (pipeline.yaml's volume_gb):"]
    for step, parts in disk_parts(job, chosen[1]).items():
        stored, gb = sum(parts.values()), settings.volume_gb[step]
        verdict = "ok" if stored <= volume_bytes(gb) else f"too small: set {VOLUME_KEYS[step]} to at least {volume_needed(stored)}"
        lines.append(f"  {step:<11} {size_text(stored):>10} of {gb:>4} GB  {verdict}")
    hours = target / 3600
    lines += ["", f"similarity hosts: the fewest that finish within {hours:,.1f} h (half of similarity.max_runtime_seconds,"
                  " or --hours):",
              f"  {'instance type':<15} {'vCPUs':>5} {'memory':>8} {'hosts':>5}  {'MB per host (usable)':>20} {'time':>9} "
              f"{'on-demand':>10} {'spot':>9}"]
    best = None
    for name in candidates:
        kind = known.get(name)
        if kind is None:
            lines.append(f"  {name:<15} not in steps/instances.json: no estimate")
            continue
        found = smallest_count(job, settings, kind, speed, target, known)
        if found is None:
            need = estimate(job, settings, kind, max(1, min(MAX_HOSTS, job.rows)), speed, known).memory_need
            lines.append(f"  {name:<15} {kind.vcpus:>5} {kind.memory_gib:>4} GiB {'-':>5}  {need / MB:>8,.0f} > "
                         f"{kind.usable_mb:>9,}  does not fit")
            continue
        late = " (late)" if found.seconds > target else ""
        lines.append(f"  {name:<15} {kind.vcpus:>5} {kind.memory_gib:>4} GiB {found.hosts:>5}  "
                     f"{found.memory_need / MB:>8,.0f} of {kind.usable_mb:>8,} {duration(found.seconds):>9}{late} "
                     f"{money(found.on_demand):>10} {money(found.spot):>9}")
        if best is None or (found.seconds <= target, -found.on_demand, -found.seconds) > (
                best.seconds <= target, -best.on_demand, -best.seconds):
            best = found
    if best:
        lines += ["", f"recommended: --param InstanceType={best.type.name} --param InstanceCount={best.hosts} "
                      f"({duration(best.seconds)}, {money(best.on_demand)} on-demand, {money(best.spot)} spot)"]
    kind = known.get(chosen[0])
    fit = check_fit(job, settings, chosen[0], chosen[1], where, known)
    if kind:
        now = estimate(job, settings, kind, chosen[1], speed, known)
        lines.append(f"these parameters: InstanceType={chosen[0]} InstanceCount={chosen[1]}: {duration(now.seconds)}, "
                     f"{money(now.on_demand)} on-demand, {money(now.spot)} spot; " +
                     ("fits" if not fit.problems else "refused by `run` and `start`:"))
    lines += [f"  {problem}" for problem in fit.problems] + [f"  note: {note}" for note in fit.notes]
    if local_cores:
        hosts = chosen[1]  # simulated hosts share this machine's cores: their work adds up
        here = hosts * similarity_seconds(job, hosts, 1, speed) / local_cores
        lines.append(f"this machine: `python -m pipeline run` would compute the similarity step in about {duration(here)} "
                     f"(its {chosen[1]} simulated host{'s' if chosen[1] != 1 else ''} sharing {local_cores} core"
                     f"{'s' if local_cores != 1 else ''})")
    lines.append("not counted: Preprocess, Merge and Register (one instance each), start-up and data transfer")
    return lines


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:,.2g} s"


def size_text(size: int) -> str:
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:,.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{size} B"


def money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 0.01 else "<$0.01"
