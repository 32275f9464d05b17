"""The local model registry: one SQLite file (under the local run directory), one row per registered version.
Register writes it (steps/registry.py); `python -m pipeline registry` reads it. The same record as the SageMaker
Model Registry gets; versions number from 1 within a group, and a version's client_token makes registering
idempotent, as CreateModelPackage's ClientToken does."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from ..errors import StepError

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


def damaged(path: Path, exc: Exception) -> StepError:
    """The one message for a registry file that SQLite cannot use (not a database, corrupt, read-only, full)."""
    return StepError(f"local registry {path}: {exc}; if it is damaged, move it aside (mv {path} {path}.damaged) "
                     "and run again to start a new one; else check that it is a writable SQLite file")


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
        raise damaged(path, exc) from exc


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
            arn = local_arn(group, version)
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            con.execute(f"INSERT INTO model_packages ({_COLUMNS}, client_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (group, version, arn, approval_status, description, json.dumps(metadata, sort_keys=True),
                         created, token))
            con.execute("COMMIT")
    except sqlite3.Error as exc:
        raise damaged(path, exc) from exc
    finally:
        con.close()
    return {"registry": "local", "location": str(path), "model_package_group": group, "version": version,
            "model_package_arn": arn, "approval_status": approval_status, "created_at": created}


LOCAL_ARN_PREFIX = "local:model-package/"  # local:model-package/<group>/<version>, as Register names them
_KEYS = ("model_package_group", "version", "model_package_arn", "approval_status", "description", "metadata",
         "created_at")


def local_arn(group: str, version: int) -> str:
    return f"{LOCAL_ARN_PREFIX}{group}/{version}"


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
        return [_entry(row) for row in rows]
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise damaged(Path(path), exc) from exc
    finally:
        con.close()


def find_local(path: Path, arn: str) -> dict | None:
    """The entry of this ARN (local:model-package/<group>/<version>), or None."""
    if not Path(path).exists():
        return None
    con = connect_local(Path(path))
    try:
        row = con.execute(f"SELECT {_COLUMNS} FROM model_packages WHERE arn = ?", (arn,)).fetchone()
        return _entry(row) if row else None
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise damaged(Path(path), exc) from exc
    finally:
        con.close()


def set_local_status(path: Path, arn: str, approval_status: str) -> dict | None:
    """Set an entry's approval status (approve, reject); returns the entry as it is now, None if there is none."""
    if not Path(path).exists():
        return None
    con = connect_local(Path(path))
    try:
        con.execute("UPDATE model_packages SET approval_status = ? WHERE arn = ?", (approval_status, arn))
    except sqlite3.Error as exc:
        raise StepError(f"local registry {path}: {exc}; check the path is a writable SQLite file") from exc
    finally:
        con.close()
    return find_local(path, arn)


def _entry(row: tuple) -> dict:
    return dict(zip(_KEYS, row[:5] + (json.loads(row[5]),) + row[6:]))
