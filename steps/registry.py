"""Registering a merged artifact: SageMaker Model Registry in the cloud, an embedded SQLite registry locally.

Both get the same record. The metadata respects CustomerMetadataProperties' limits (50 entries, keys up to
128 characters, values up to 256) so what works locally works in the cloud.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from .errors import StepError

LOCAL_REGISTRY_ENV = "ALLPAIRS_LOCAL_REGISTRY"
APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_packages (
    group_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    arn TEXT NOT NULL UNIQUE,
    approval_status TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    client_token TEXT UNIQUE,
    PRIMARY KEY (group_name, version)
)"""
_COLUMNS = "group_name, version, arn, approval_status, description, metadata, created_at"


def connect_local(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the local registry; a failure says which file and how to fix it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=60, isolation_level=None)
        con.execute(_SCHEMA)
        if "client_token" not in {row[1] for row in con.execute("PRAGMA table_info(model_packages)")}:
            con.execute("ALTER TABLE model_packages ADD COLUMN client_token TEXT")  # a registry made before it
            con.execute("CREATE UNIQUE INDEX IF NOT EXISTS model_packages_token ON model_packages(client_token)")
        return con
    except (sqlite3.Error, OSError) as exc:
        raise StepError(f"local registry {path}: {exc}; check the path is a writable SQLite file (or remove it "
                        "to start a new registry)") from exc


def register_local(path: Path, group, approval_status, description, metadata, token: str) -> dict:
    con = connect_local(path)
    try:
        # IMMEDIATE takes the write lock first, so concurrent runs get distinct version numbers.
        con.execute("BEGIN IMMEDIATE")
        found = con.execute(f"SELECT {_COLUMNS} FROM model_packages WHERE client_token = ?", (token,)).fetchone()
        if found:  # registered before by this very Merge (a retry): the same version, as ClientToken gives
            con.execute("COMMIT")
            group, version, arn, approval_status, _, _, created = found
        else:
            (last,) = con.execute("SELECT COALESCE(MAX(version), 0) FROM model_packages WHERE group_name = ?",
                                  (group,)).fetchone()
            version = last + 1
            arn = f"local:model-package/{group}/{version}"
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            con.execute(f"INSERT INTO model_packages ({_COLUMNS}, client_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (group, version, arn, approval_status, description, json.dumps(metadata, sort_keys=True),
                         created, token))
            con.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StepError(f"local registry {path}: {exc}; check the path is a writable SQLite file (or remove it "
                        "to start a new registry)") from exc
    finally:
        con.close()
    return {"registry": "local", "location": str(path), "model_package_group": group, "version": version,
            "model_package_arn": arn, "approval_status": approval_status, "created_at": created}


def list_local(path: Path, group: str | None = None) -> list[dict]:
    if not Path(path).exists():
        return []
    con = connect_local(Path(path))
    try:
        query = f"SELECT {_COLUMNS} FROM model_packages"
        args: tuple = ()
        if group:
            query += " WHERE group_name = ?"
            args = (group,)
        rows = con.execute(query + " ORDER BY group_name, version", args).fetchall()
    finally:
        con.close()
    keys = ("model_package_group", "version", "model_package_arn", "approval_status", "description", "metadata",
            "created_at")
    return [dict(zip(keys, row[:5] + (json.loads(row[5]),) + row[6:])) for row in rows]


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
