"""One process tree per execution: `executions/<id>/.lock`, an flock held by the runner AND by every host it starts.

The hosts inherit the locked file descriptor, and an flock lasts until the last descriptor of its open file is
closed: if the runner dies (even by SIGKILL) while hosts still run, the execution stays locked until the last
of them has exited, so a `--resume` can never run alongside orphans of the run before. The file lists the
runner's and each host's pid (`<pid> <label>` lines), so a refusal can say which processes still hold it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline.errors import LocalRunError


class ExecutionLock:
    def __init__(self, path: Path, execution_id: str):
        self.path, self.execution_id = path, execution_id
        self._handle = None

    @property
    def fd(self) -> int:
        """The locked descriptor, for the hosts to inherit (subprocess pass_fds)."""
        return self._handle.fileno()

    def acquire(self) -> "ExecutionLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = live_holders(self.path)
            handle.close()
            held = f", held by {', '.join(holders)}" if holders else ""
            raise LocalRunError(f"execution {self.execution_id} is being run by another process (lock {self.path}"
                                f"{held}); wait for it to end or stop it first") from None
        handle.truncate(0)
        self._handle = handle
        self.note(os.getpid(), "runner")
        return self

    def note(self, pid: int, label: str) -> None:
        """Record a process that holds the lock (the runner, then each host as it starts)."""
        os.write(self.fd, f"{pid} {label}\n".encode())

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ExecutionLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def live_holders(path: Path) -> list[str]:
    """'pid 4242 (Similarity algo-2)' for each process the lock file lists that is still running (not this one:
    whatever this process holds, it is not what it waits for)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        pid, _, label = line.partition(" ")
        if pid.isdigit() and int(pid) != os.getpid() and running(int(pid)):
            found.append(f"pid {pid} ({label})")
    return found


def running(pid: int) -> bool:
    """Alive with files open: an exited process (a zombie not yet reaped, whose threads are all gone) holds no
    descriptor, hence no lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return bool(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return not Path("/proc/self/fd").is_dir()  # no /proc (macOS): alive as far as we can tell
    except PermissionError:
        return True
