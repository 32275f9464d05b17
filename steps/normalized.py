"""Reading the Preprocess output (the `normalized` folder), trusting nothing: every chunk is checked."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StepError
from .io import sha256_file

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Normalized:
    root: Path
    manifest: dict
    chunks: list[np.ndarray]  # memory-mapped, read-only

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def ids_path(self) -> Path:
        return self.root / self.manifest["ids"]["file"]


def load_normalized(root: Path, verify: bool = True) -> Normalized:
    """Open the chunks listed in manifest.json; a missing, reshaped or altered chunk is an error naming it."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise StepError(f"{manifest_path}: missing; the Preprocess output is incomplete (rerun the Preprocess step)")
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["chunks"]
        dim = int(manifest["dim"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{manifest_path}: not a valid Preprocess manifest ({exc}); rerun the Preprocess step")
    chunks = []
    expected_start = 0
    for entry in entries:
        path = root / entry["file"]
        if not path.exists():
            raise StepError(f"{path}: chunk listed in {MANIFEST} is missing; rerun the Preprocess step")
        if verify and sha256_file(path) != entry["sha256"]:
            raise StepError(f"{path}: checksum differs from {MANIFEST} (corrupt or from another run); "
                            "rerun the Preprocess step")
        chunk = np.load(path, mmap_mode="r")
        rows = entry["stop"] - entry["start"]
        if entry["start"] != expected_start or chunk.shape != (rows, dim) or chunk.dtype != np.float32:
            raise StepError(f"{path}: holds {chunk.dtype}{chunk.shape}, {MANIFEST} says float32({rows}, {dim}) "
                            f"at row {entry['start']}; rerun the Preprocess step")
        expected_start = entry["stop"]
        chunks.append(chunk)
    if expected_start != manifest["rows"]:
        raise StepError(f"{manifest_path}: chunks cover {expected_start} rows, the manifest says {manifest['rows']}; "
                        "rerun the Preprocess step")
    return Normalized(root, manifest, chunks)


def check_instance_count(hosts: int, rows: int) -> None:
    """Every similarity host needs at least one row: refused by Preprocess, before any host starts."""
    if hosts > max(rows, 1):
        most = max(rows, 1)
        raise StepError(f"InstanceCount={hosts} is larger than the number of rows ({rows}): use at most {most} "
                        f"instance{'s' if most > 1 else ''} (--param InstanceCount={most})")
