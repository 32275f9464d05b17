"""Registering an artifact: SageMaker Model Registry in the cloud, an embedded SQLite registry locally
(its format: steps/formats/registry.py).

Both get the same record. The metadata respects CustomerMetadataProperties' limits (50 entries, keys up to
128 characters, values up to 256) so what works locally works in the cloud.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .contract import APPROVAL_STATUSES, LOCAL_REGISTRY_ENV
from .errors import StepError
from .formats.registry import register_local
MAX_ENTRIES, MAX_KEY, MAX_VALUE = 50, 128, 256


def customer_metadata(flat: dict[str, object]) -> dict[str, str]:
    """Stringify a flat record within the Model Registry's limits: values 1-256 characters of letters, digits,
    spaces and _.:/=+-@ (others become "_", over-long values are cut with "...", empty or None is "none"; the
    artifact's manifest.json keeps every value whole). Too many entries or a long key is a bug, not user input."""
    if len(flat) > MAX_ENTRIES:
        raise ValueError(f"{len(flat)} metadata entries, the Model Registry takes at most {MAX_ENTRIES}")
    out = {}
    for key, value in flat.items():
        if len(str(key)) > MAX_KEY:
            raise ValueError(f"metadata key {str(key)[:40]}... is longer than {MAX_KEY} characters")
        text = _registry_text("" if value is None else str(value)) or "none"
        out[_registry_text(str(key))] = text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
    return out


def _registry_text(text: str) -> str:
    """CustomerMetadata's character set: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]."""
    return "".join(c if c.isalpha() or c.isnumeric() or c.isspace() or c in "_.:/=+-@" else "_" for c in text)


def check_approval_status(approval_status: str) -> None:
    if approval_status not in APPROVAL_STATUSES:
        raise StepError(f"ApprovalStatus={approval_status!r}: must be one of {', '.join(APPROVAL_STATUSES)}")


def register(group: str, approval_status: str, description: str, metadata: dict[str, str], token: str) -> dict:
    """Register one version; returns the registration record (written as registration.json).

    `token` makes it idempotent (CreateModelPackage's ClientToken; a unique column locally): registering the
    same token again returns the version it created the first time."""
    check_approval_status(approval_status)
    local = os.environ.get(LOCAL_REGISTRY_ENV)
    if local:
        return register_local(Path(local), group, approval_status, description, metadata, token)
    return register_sagemaker(group, approval_status, description, metadata, token)


def ensure_group(client, group: str) -> None:
    """Create the model package group if missing. Two executions may race to create it: whatever the error
    (the wording of "already exists" varies), the group existing afterwards is success."""
    from botocore.exceptions import ClientError

    try:
        client.create_model_package_group(ModelPackageGroupName=group,
                                          ModelPackageGroupDescription="allpairs similarity artifacts")
    except ClientError as exc:
        try:
            client.describe_model_package_group(ModelPackageGroupName=group)
        except ClientError:
            raise exc from None


def register_sagemaker(group, approval_status, description, metadata, token: str) -> dict:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("sagemaker")
    try:
        ensure_group(client, group)
        response = client.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=description[:1024],
            ModelApprovalStatus=approval_status,
            CustomerMetadataProperties=metadata,
            ClientToken=token,
        )
    except (ClientError, BotoCoreError) as exc:
        raise StepError(f"SageMaker Model Registry, group {group!r}: {exc}; the execution role needs "
                        "sagemaker:CreateModelPackageGroup and sagemaker:CreateModelPackage")
    arn = response["ModelPackageArn"]
    return {"registry": "sagemaker", "model_package_group": group, "version": int(arn.rsplit("/", 1)[-1]),
            "model_package_arn": arn, "approval_status": approval_status,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
