"""Register step: check the artifact where it landed, file by file, then register it (and only then).

    python3 -m steps.register --execution-id <PipelineExecutionId> --artifact-uri <where Merge's output landed>
                              --model-package-group <ModelPackageGroup> --approval-status <ApprovalStatus>

Why a step of its own: a processing job's outputs are uploaded by the service after its container exits
(docs: "How Amazon SageMaker Processing Configures Input and Output For Your Processing Container"), so a
registry call from inside Merge would always come before Merge's files exist in S3; if the upload failed, the
registry would point at nothing, and an `Approved` package would set deployment automation off on files not
there yet. Register starts only after Merge succeeded, receives the artifact through its own input (the
service downloads it from the very prefix the package will name), and refuses unless every file the manifest
lists is there with the size and SHA-256 Merge computed, and the manifest is this execution's.

The model package's ClientToken derives from the execution id and the manifest's SHA-256: a retried Register
(a crash between registering and exiting) gets the same version back, never a second one. Its record goes to
the `registration` output, which lands beside the artifact files (registration.json).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from . import paths, registry
from .errors import StepArgumentParser, StepError, run_step
from .io import sha256_file, sha256_text, write_json
from .merge import FORMAT, VERSION
from .normalized import MANIFEST


def check_artifact(folder: Path, execution_id: str, artifact_uri: str) -> dict:
    """The artifact's manifest, once every file it lists is present, complete and unaltered."""
    path = folder / MANIFEST
    fix = "rerun the Merge step (its output upload may have failed or been altered)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise StepError(f"{artifact_uri}/{MANIFEST}: missing; the artifact is incomplete: {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{artifact_uri}/{MANIFEST}: not an artifact manifest ({exc}); {fix}") from None
    if (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise StepError(f"{artifact_uri}/{MANIFEST}: format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}; {fix}")
    if manifest.get("execution_id") != execution_id or manifest.get("artifact_uri") != artifact_uri:
        raise StepError(f"{artifact_uri}/{MANIFEST}: written for execution {manifest.get('execution_id')!r} at "
                        f"{manifest.get('artifact_uri')!r}, not this one ({execution_id!r} at {artifact_uri!r}): "
                        "another execution's artifact is never registered; rerun the Merge step")
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise StepError(f"{artifact_uri}/{name}: listed in {MANIFEST} but not there; {fix}")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise StepError(f"{artifact_uri}/{name}: {size} bytes, {MANIFEST} says {entry['bytes']}; {fix}")
        if sha256_file(file) != entry["sha256"]:
            raise StepError(f"{artifact_uri}/{name}: SHA-256 differs from {MANIFEST}; {fix}")
    return manifest


def registry_metadata(manifest: dict, manifest_sha256: str) -> dict[str, str]:
    counts, params = manifest["counts"], manifest["parameters"]
    flat = {
        "artifact_uri": manifest["artifact_uri"], "execution_id": manifest["execution_id"],
        "format_version": f"{FORMAT}/{VERSION}", "rows": manifest["rows"], "dim": manifest["dim"],
        "k": manifest["k"], "threshold": manifest["threshold"],
        "input_uri": manifest["input"]["uri"], "input_fingerprint": manifest["input"]["fingerprint"],
        "manifest_sha256": manifest_sha256,
        **{f"count_{key}": value for key, value in counts.items()},
        **{f"param_{key}": value for key, value in sorted(params.items())[:30]},
    }
    return registry.customer_metadata(flat)


def main(argv: Sequence[str]) -> None:
    parser = StepArgumentParser(prog="python -m steps.register", description=__doc__.splitlines()[0])
    parser.add_argument("--execution-id", required=True)
    parser.add_argument("--artifact-uri", required=True, help="where the artifact is (what the package names)")
    parser.add_argument("--model-package-group", required=True)
    parser.add_argument("--approval-status", default="PendingManualApproval")
    args = parser.parse_args(argv)
    registry.check_approval_status(args.approval_status)  # before any work, not after it
    folder = paths.processing_input("artifact")
    manifest = check_artifact(folder, args.execution_id, args.artifact_uri)
    manifest_sha256 = sha256_file(folder / MANIFEST)
    metadata = registry_metadata(manifest, manifest_sha256)
    record = registry.register(args.model_package_group, args.approval_status,
                               f"allpairs top-{manifest['k']} neighbours of {manifest['rows']} rows, "
                               f"execution {args.execution_id}", metadata,
                               token=sha256_text(args.execution_id, manifest_sha256)[:32])
    write_json(paths.processing_output("registration") / "registration.json", {**record, "metadata": metadata})
    print(f"registered {record['model_package_arn']} ({record['approval_status']}): {args.artifact_uri}", flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a processing job's is read."""
    return run_step("register", main, argv, job=paths.PROCESSING)


if __name__ == "__main__":
    sys.exit(run())
