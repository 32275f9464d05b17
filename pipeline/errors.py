"""One exception type per phase. The CLI maps them to exit codes: 2 for spec/usage, 1 for run failures."""
import errno
import os
import signal


class AllpairsError(Exception):
    """Base: the message is one line that says where, what and how to fix it."""

    exit_code = 1


class SpecError(AllpairsError):
    """pipeline.yaml is invalid (message names the file, line and YAML path)."""

    exit_code = 2


class UsageError(AllpairsError):
    """A command-line argument or --param override is invalid."""

    exit_code = 2


class CompileError(AllpairsError):
    """The spec is valid but cannot be turned into a pipeline definition."""

    exit_code = 2


class LocalRunError(AllpairsError):
    """A local execution failed (message names the step, host and reason)."""


class ArtifactReadError(AllpairsError):
    """An artifact cannot be read (message names the file and the fix)."""


class AwsError(AllpairsError):
    """A call to AWS failed (message names the cause and the fix)."""


class DefinitionError(AllpairsError):
    """The definition holds something the local runner (or validate) cannot interpret: a bug in compile.py or in
    pipeline/definition, never the user's."""


class Stopped(KeyboardInterrupt):
    """A local run stopped by a signal (pipeline/local/interrupts.py): Ctrl-C (SIGINT), SIGTERM or SIGHUP."""

    def __init__(self, signum: int, why: str):
        super().__init__(why)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal: 130 for Ctrl-C

    @property
    def reason(self) -> str:
        return "interrupted" if self.signum == signal.SIGINT else f"stopped by {signal.Signals(self.signum).name}"


# What to do about a failing file operation, by errno: the path and the reason come from the OSError itself.
OS_FIXES = {
    errno.ENOSPC: "the disk is full: free space, or choose a --workdir (or output location) on another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or choose a --workdir on another disk",
    errno.EROFS: "the file system is read-only: choose a writable --workdir",
    errno.EACCES: "permission denied: choose a --workdir you can write to",
    errno.EPERM: "permission denied: choose a --workdir you can write to",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter --workdir",
    errno.ENOTDIR: "a file is in the way where a folder is needed: move it, or choose another --workdir",
    errno.EEXIST: "a file is in the way where a folder is needed: move it, or choose another --workdir",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def os_problem(exc: OSError) -> str:
    """'<path>: <reason>; <fix>' for an OSError, one line (the path as given, the reason as the OS says it)."""
    path = exc.filename if exc.filename is not None else ""
    reason = (exc.strerror or os.strerror(exc.errno)) if exc.errno else str(exc)
    fix = OS_FIXES.get(exc.errno, "check that location")
    return f"{path}: {reason}; {fix}" if path else f"{reason}; {fix}"
