"""One exception type for the steps, and the wrapper that turns it into SageMaker's failure file."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

from . import paths


class StepError(Exception):
    """A failure the user can fix: the message says where, what and how."""


class StepArgumentParser(argparse.ArgumentParser):
    """argparse that raises StepError, so a bad argument lands in the failure file like any other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split())  # one line: the failure file holds one line
        raise StepError(f"bad arguments: {message}; {usage}")


def run_step(name: str, main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> int:
    """Run a step's main; on failure write the reason to /opt/ml/output/failure and return 1."""
    try:
        main(sys.argv[1:] if argv is None else argv)
        return 0
    except StepError as exc:
        reason = f"{name}: {exc}"
    except KeyboardInterrupt:
        reason = f"{name}: interrupted"
    except Exception as exc:  # an unexpected bug: keep the traceback in the log, the reason in the file
        traceback.print_exc()
        reason = f"{name}: internal error: {type(exc).__name__}: {exc}"
    print(reason, file=sys.stderr)
    try:
        failure = paths.failure_file()
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(reason[:1024] + "\n")
    except OSError:
        pass
    return 1
