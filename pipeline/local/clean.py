"""`python -m pipeline clean`: which local executions to remove (with their outputs), and removing them.

An execution is <workdir>/executions/<id>/ (record, job roots, logs) plus its outputs, <OutputPrefix>/<id>/
(normalized matrix, shards, checkpoints, artifact) when OutputPrefix is on this machine; an s3:// output is never
touched. Never removed: an execution whose lock (executions/<id>/.lock) another process holds (it is running),
and, unless asked, one the local registry points to (an entry naming its execution id or its artifact). The
lock is taken before anything is removed and held until it is gone, so a run or a resume cannot start inside
a half-removed execution.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.errors import LocalRunError, UsageError

from .execution import LOCK_FILE, RECORD_FILE, REGISTRY_FILE
from .storage import is_s3, local_path

AGE = re.compile(r"(\d+)([smhdw])")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w'."""
    match = AGE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--older-than {text}: expected a number and a unit (s, m, h, d, w), e.g. 7d or 12h")
    return timedelta(**{AGE_UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class Candidate:
    """One local execution and what removing it would free."""

    id: str
    status: str
    when: datetime  # ended, else started, else the folder's modification time
    paths: list[Path] = field(default_factory=list)
    bytes: int = 0
    reason: str = ""  # why it is selected
    kept: str = ""  # why it is not removed (running, registered); empty: it is removed


def plan(workdir: Path, older_than: timedelta | None, unregistered: bool, registered_too: bool,
         now: datetime | None = None) -> list[Candidate]:
    """The executions the criteria select (older than `older_than`, and not registered if `unregistered`),
    oldest first; those with `kept` set stay: running, or registered (unless `registered_too`)."""
    if older_than is None and not unregistered:
        raise UsageError("clean: say which executions: --older-than AGE (e.g. 7d), --unregistered, or both")
    if registered_too and older_than is None:
        raise UsageError("clean: --registered-too goes with --older-than (--unregistered alone never selects a "
                         "registered execution)")
    now = now or datetime.now(timezone.utc)
    registered = registry_references(workdir / REGISTRY_FILE)
    found = []
    for directory in sorted(p for p in (workdir / "executions").glob("*") if p.is_dir()):
        candidate = describe(directory)
        entries = [arn for arn, (execution_id, uri) in registered.items()
                   if execution_id == candidate.id or any(_inside(uri, path) for path in candidate.paths)]
        if (older_than is not None and now - candidate.when <= older_than) or (unregistered and entries):
            continue
        age = f"{_ago(now - candidate.when)} old" if older_than is not None else ""
        candidate.reason = "; ".join(part for part in (age, "" if entries else "not registered") if part)
        if entries and not registered_too:
            candidate.kept = f"registered as {', '.join(entries)} (--registered-too removes it as well)"
        elif is_locked(directory):
            candidate.kept = "running (another process holds its lock)"
        found.append(candidate)
    return sorted(found, key=lambda c: (c.when, c.id))


def remove(candidate: Candidate, workdir: Path) -> bool:
    """Remove one planned execution under its lock; False when it started running since it was planned."""
    directory = workdir / "executions" / candidate.id
    with _lock(directory) as held:
        if not held:
            return False
        try:
            for path in candidate.paths[1:]:  # its outputs first: the record (paths[0]) says where they are
                shutil.rmtree(path)
            shutil.rmtree(directory)
        except OSError as exc:
            raise LocalRunError(f"{exc.filename or directory}: cannot remove it ({exc.strerror or exc}); fix its "
                                "permissions and run clean again (what is left is listed again)") from None
    return True


def describe(directory: Path) -> Candidate:
    """An execution's state, age and local paths, from its record (a missing or torn record: its folder's age)."""
    try:
        record = json.loads((directory / RECORD_FILE).read_text())
    except (OSError, ValueError):
        record = {}
    when = _time(record.get("ended")) or _time(record.get("started")) or \
        datetime.fromtimestamp(directory.stat().st_mtime, timezone.utc)
    candidate = Candidate(directory.name, record.get("status") or "unreadable record", when, [directory])
    prefix = str((record.get("parameters") or {}).get("OutputPrefix") or "")
    if prefix and not is_s3(prefix):
        output = local_path(prefix) / directory.name
        if output.is_dir():
            candidate.paths.append(output)
    candidate.bytes = sum(_size(path) for path in candidate.paths)
    return candidate


def registry_references(path: Path) -> dict[str, tuple[str | None, str | None]]:
    """Each local registry entry's (execution id, artifact URI)."""
    from steps.formats.registry import list_local

    try:
        entries = list_local(path)
    except Exception as exc:  # a registry that cannot be read protects nothing: refuse rather than guess
        raise LocalRunError(f"{path}: cannot read the local registry ({exc}); clean would not know which "
                            "executions it points to: fix or move it first") from None
    return {e["model_package_arn"]: (e["metadata"].get("execution_id"), e["metadata"].get("artifact_uri"))
            for e in entries}


def is_locked(directory: Path) -> bool:
    with _lock(directory) as held:
        return not held


@contextlib.contextmanager
def _lock(directory: Path):
    """Yields True while this process holds the execution's lock, False if another process holds it."""
    path = directory / LOCK_FILE
    if not path.exists():  # never run, or its folder half gone: nobody can hold it
        yield True
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _inside(uri: str | None, path: Path) -> bool:
    if not uri or is_s3(uri):
        return False
    target = local_path(uri)
    return target == path or path in target.parents


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if text else None
    except ValueError:
        return None


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):  # links (the staged inputs) are not followed: not ours to count
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
