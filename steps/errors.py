"""One exception type for the steps, and the wrapper that turns it into SageMaker's failure file."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

from .contract import failure_file, failure_text


class StepError(Exception):
    """A failure the user can fix: the message says where, what and how."""


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
    print(reason, file=sys.stderr)
    try:
        failure = failure_file(job)
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_bytes(failure_text(reason))
    except OSError:
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
    except Exception as exc:  # an unexpected bug: keep the traceback in the log, the reason in the file
        traceback.print_exc()
        return f"{name}: internal error: {type(exc).__name__}: {exc}"
