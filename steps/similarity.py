"""Similarity step: the image's `train`. Each host computes the top-k neighbours of its even share of rows.

Reads the SageMaker training contract (resourceconfig.json, hyperparameters.json, the `normalized` channel)
and writes host-unique shard files to /opt/ml/model. See docs/container-contract.md, section 2.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import paths
from .errors import StepError, run_step
from .io import atomic_path, sha256_file, write_json
from .kernel import Corpus, top_k
from .normalized import load_normalized

CHANNEL = "normalized"


@dataclass(frozen=True)
class Host:
    name: str
    hosts: list[str]

    @property
    def index(self) -> int:
        return self.hosts.index(self.name)

    def share(self, rows: int) -> tuple[int, int]:
        """This host's even share of the rows: [i*N//H, (i+1)*N//H)."""
        h = len(self.hosts)
        return self.index * rows // h, (self.index + 1) * rows // h


@dataclass(frozen=True)
class Settings:
    top_k: int
    min_score: float | None
    memory_budget_mb: int
    threads: int


def read_host(path: Path) -> Host:
    try:
        cfg = json.loads(path.read_text())
        host = Host(cfg["current_host"], list(cfg["hosts"]))
        host.index  # noqa: B018 - raises ValueError if current_host is not among hosts
        return host
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{path}: not a valid resourceconfig.json ({exc}); SageMaker writes it for every "
                        "training host: run this program as a training job or through `python -m pipeline run`")


def read_settings(path: Path) -> Settings:
    try:
        raw = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as exc:
        raise StepError(f"{path}: not valid JSON ({exc})")

    def number(name, kind, default):
        value = raw.get(name, default)
        try:
            return kind(json.loads(value) if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise StepError(f"{path}: hyperparameter {name}={value!r} is not a valid {kind.__name__}")

    k = number("top_k", int, 10)
    min_score = number("min_score", float, -1.0)
    budget = number("memory_budget_mb", int, 1024)
    threads = number("threads", int, 0)
    if k < 1:
        raise StepError(f"TopK={k}: must be at least 1; set the TopK parameter to the number of neighbours wanted")
    if not -1.0 <= min_score <= 1.0:
        raise StepError(f"MinScore={min_score}: cosine scores lie in [-1, 1]; use a threshold in that range "
                        "(-1 disables it)")
    if budget < 16:
        raise StepError(f"memory_budget_mb={budget}: must be at least 16 (MB); raise similarity.memory_budget_mb")
    return Settings(k, None if min_score <= -1.0 else min_score, budget, threads)


def shard_names(host: str) -> dict[str, str]:
    stem = f"shard-{host}"
    return {"neighbors": f"{stem}.neighbors.npy", "scores": f"{stem}.scores.npy", "meta": f"{stem}.json"}


def compute_shard(normalized_dir: Path, host: Host, settings: Settings, out_dir: Path) -> dict:
    """Compute this host's rows and write its shard files (data first, the JSON that vouches for them last)."""
    data = load_normalized(normalized_dir)
    corpus = Corpus(data.chunks)
    if len(host.hosts) > max(data.rows, 1):
        raise StepError(f"InstanceCount={len(host.hosts)} is larger than the number of rows ({data.rows}): "
                        f"use at most {max(data.rows, 1)} instances")
    start, stop = host.share(data.rows)
    names = shard_names(host.name)
    k = settings.top_k
    began = time.time()
    from numpy.lib.format import open_memmap

    with atomic_path(out_dir / names["neighbors"]) as tmp_n, atomic_path(out_dir / names["scores"]) as tmp_s:
        neighbors = open_memmap(tmp_n, mode="w+", dtype=np.int64, shape=(stop - start, k))
        scores = open_memmap(tmp_s, mode="w+", dtype=np.float32, shape=(stop - start, k))
        budget = settings.memory_budget_mb << 20
        for first, nb, sc in top_k(corpus, start, stop, k, settings.min_score, budget):
            neighbors[first - start: first - start + len(nb)] = nb
            scores[first - start: first - start + len(sc)] = sc
        neighbors.flush()
        scores.flush()
        del neighbors, scores
    meta = {
        "format": "allpairs.shard", "version": 1, "host": host.name, "hosts": host.hosts,
        "start": start, "stop": stop, "k": k,
        "min_score": settings.min_score, "input_fingerprint": data.fingerprint,
        "files": {names[key]: sha256_file(out_dir / names[key]) for key in ("neighbors", "scores")},
        "seconds": round(time.time() - began, 3),
    }
    write_json(out_dir / names["meta"], meta)
    return meta


def main(argv: Sequence[str]) -> None:
    host = read_host(paths.training_config("resourceconfig.json"))
    settings = read_settings(paths.training_config("hyperparameters.json"))
    meta = compute_shard(paths.training_channel(CHANNEL), host, settings, paths.model_dir())
    print(f"{host.name}: rows [{meta['start']}, {meta['stop']}) done in {meta['seconds']} s", flush=True)


if __name__ == "__main__":
    sys.exit(run_step("similarity", main))
