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

import sys
from typing import Sequence

from . import registry
from .contract import (APPROVAL_STATUSES, ARTIFACT, MANIFEST, PROCESSING, REGISTRATION, REGISTRATION_FILE, REPORT_HTML, here,
                       processing_input_path, processing_output_path)
from .errors import StepArgumentParser, run_step
from .formats import artifact
from .io import sha256_file, sha256_text, write_json


def registry_metadata(manifest: dict, manifest_sha256: str) -> dict[str, str]:
    counts, params = manifest["counts"], manifest["parameters"]
    flat = {
        "artifact_uri": manifest["artifact_uri"], "report_uri": report_uri(manifest),
        "execution_id": manifest["execution_id"],
        "format_version": f"{artifact.FORMAT}/{artifact.VERSION}", "rows": manifest["rows"], "dim": manifest["dim"],
        "k": manifest["k"], "threshold": manifest["threshold"],
        "input_uri": manifest["input"]["uri"], "input_fingerprint": manifest["input"]["fingerprint"],
        "manifest_sha256": manifest_sha256,
        **{f"count_{key}": value for key, value in counts.items()},
        **{f"param_{key}": value for key, value in sorted(params.items())[:30]},
    }
    return registry.customer_metadata(flat)


def report_uri(manifest: dict) -> str:
    """Where report.html is: its full URI, or, when that would pass a metadata value's 256 characters (an
    artifact_uri within 12 of them), its name, which is then relative to artifact_uri."""
    if REPORT_HTML not in manifest.get("files", {}):
        return "none"  # an artifact written before the report existed
    uri = f"{manifest['artifact_uri'].rstrip('/')}/{REPORT_HTML}"
    return uri if len(uri) <= registry.MAX_VALUE else REPORT_HTML


def main(argv: Sequence[str]) -> None:
    parser = StepArgumentParser(prog="python -m steps.register", description=__doc__.splitlines()[0])
    parser.add_argument("--execution-id", required=True)
    parser.add_argument("--artifact-uri", required=True, help="where the artifact is (what the package names)")
    parser.add_argument("--model-package-group", required=True)
    parser.add_argument("--approval-status", default=APPROVAL_STATUSES[0])
    args = parser.parse_args(argv)
    registry.check_approval_status(args.approval_status)  # before any work, not after it
    folder = here(processing_input_path(ARTIFACT))
    manifest = artifact.check(folder, args.execution_id, args.artifact_uri)
    manifest_sha256 = sha256_file(folder / MANIFEST)
    metadata = registry_metadata(manifest, manifest_sha256)
    record = registry.register(args.model_package_group, args.approval_status,
                               f"allpairs top-{manifest['k']} neighbours of {manifest['rows']} rows, "
                               f"execution {args.execution_id}", metadata,
                               token=sha256_text(args.execution_id, manifest_sha256)[:32])
    write_json(here(processing_output_path(REGISTRATION)) / REGISTRATION_FILE, {**record, "metadata": metadata})
    print(f"registered {record['model_package_arn']} ({record['approval_status']}): {args.artifact_uri}", flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """The step as its container runs it: exit code 0, or 1 with the reason where a processing job's is read."""
    return run_step("register", main, argv, job=PROCESSING)


if __name__ == "__main__":
    sys.exit(run())
