"""One exception type for the steps, and the wrapper that turns it into SageMaker's failure file."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

from .contract import failure_file, failure_text


class StepError(Exception):
    """A failure the user can fix: the message says where, what and how."""


# What to do about a failing file operation inside a job, by errno (the container's disk is the job's volume).
OS_FIXES = {
    errno.ENOSPC: "the disk is full: give the job more storage (volume_gb of the step in pipeline.yaml), or free "
                  "space where a local run writes (its --workdir and output location)",
    errno.EDQUOT: "the disk quota is used up: free space, or give the job more storage",
    errno.EROFS: "the file system is read-only: the job's output location must be writable",
    errno.EACCES: "permission denied: the job runs as root in its image; locally, check the path's permissions",
}


def os_problem(exc: OSError) -> str:
    """'<path>: <reason>; <fix>' for an OSError, one line."""
    reason = (exc.strerror or os.strerror(exc.errno)) if exc.errno else brief(exc)
    fix = OS_FIXES.get(exc.errno, "check that path")
    return f"{exc.filename}: {reason}; {fix}" if exc.filename is not None else f"{reason}; {fix}"


def brief(exc: BaseException, limit: int = 160) -> str:
    """An exception's text for a one-line message: its first line, cut at `limit` characters (a library may
    quote a whole hostile header back)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Terminated(KeyboardInterrupt):
    """SIGTERM: SageMaker's stop (StopTrainingJob, spot's two-minute warning) or the local runner stopping a
    host. Raised like Ctrl-C, so every `finally` and `except BaseException` cleanup runs (staging folders
    removed, completed rows checkpointed) instead of the process vanishing mid-write. `detail` says what the
    cleanup saved; it ends up in the failure reason."""

    def __init__(self, detail: str = ""):
        super().__init__(detail)
        self.detail = detail


def _terminate(signum, frame):
    # Only the first SIGTERM interrupts: a second one must not cut short the cleanup the first started
    # (SageMaker sends one; SIGKILL follows 120 s later whatever we do).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


class StepArgumentParser(argparse.ArgumentParser):
    """argparse that raises StepError, so a bad argument lands in the failure file like any other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split())  # one line: the failure file holds one line
        raise StepError(f"bad arguments: {message}; {usage}")


def run_step(name: str, main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None, *,
             job: str) -> int:
    """Run a step's main; on failure write the reason where the service reads it for this `job` type
    (contract.failure_file) and return 1. SIGTERM raises Terminated meanwhile (main thread only: Python delivers
    signals there)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        reason = _reason_of_failure(name, main, sys.argv[1:] if argv is None else argv)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if reason is None:
        return 0
    try:  # the failure file first: it is what the service shows, and a full disk may yet allow one line
        failure = failure_file(job)
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_bytes(failure_text(reason))
    except OSError:
        pass
    try:
        print(reason, file=sys.stderr, flush=True)
    except OSError:  # nobody is reading (a closed log): the failure file holds it
        pass
    return 1


def _reason_of_failure(name: str, main: Callable[[Sequence[str]], None], argv: Sequence[str]) -> str | None:
    try:
        main(argv)
        return None
    except StepError as exc:
        return f"{name}: {exc}"
    except Terminated as exc:
        return f"{name}: stopped by SIGTERM" + (f"; {exc.detail}" if exc.detail else "")
    except KeyboardInterrupt:
        return f"{name}: interrupted"
    except OSError as exc:  # the job's disk or a file it was given, not a bug: the path, the reason, the fix
        return f"{name}: {os_problem(exc)}"
    except MemoryError:
        return (f"{name}: out of memory; choose an instance type with more memory, or lower the step's "
                "memory_budget_mb in pipeline.yaml")
    except Exception as exc:  # an unexpected bug: keep the traceback in the log, the reason in the file
        traceback.print_exc()
        return f"{name}: internal error: {type(exc).__name__}: {exc}"
