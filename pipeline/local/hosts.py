"""Run a step's simulated hosts as concurrent processes, each logging to its own root."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

LOG_NAME = "job.log"  # in each host's root, beside what the container sees as /opt/ml
STOP_GRACE_SECONDS = 5.0

Echo = Callable[[str], None]


@dataclass
class HostCommand:
    host: str
    label: str  # "Similarity algo-2": prefixes echoed lines
    argv: list[str]
    env: dict[str, str]
    root: Path  # the host's ALLPAIRS_OPT_ML


@dataclass
class HostResult:
    host: str
    exit_code: int | None  # None: stopped because another host failed
    log: Path
    reason: str = ""  # why it failed, one line


@dataclass(eq=False)
class _Running:
    command: HostCommand
    process: subprocess.Popen
    log: Path
    last_stderr: list[str] = field(default_factory=lambda: [""])
    pumps: list[threading.Thread] = field(default_factory=list)


def run_hosts(commands: Sequence[HostCommand], cwd: Path, echo: Echo | None = None) -> list[HostResult]:
    """Start every host, wait for all; the first failure stops the others (as a failed training job does)."""
    running = [start(command, cwd, echo) for command in commands]
    results: dict[str, HostResult] = {}
    try:
        while len(results) < len(running):
            for run in running:
                if run.command.host not in results and run.process.poll() is not None:
                    results[run.command.host] = finish(run)
                    if run.process.returncode != 0:
                        stop_others(running, results)
            time.sleep(0.05)
    except BaseException:
        stop_others(running, results)
        raise
    return [results[c.host] for c in commands]


def start(command: HostCommand, cwd: Path, echo: Echo | None) -> _Running:
    log = command.root / LOG_NAME
    command.root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        command.argv,
        cwd=cwd,
        env=command.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: stopping a host also stops what it spawned
    )
    run = _Running(command, process, log)
    sink = open(log, "ab")
    lock = threading.Lock()
    for stream, is_stderr in ((process.stdout, False), (process.stderr, True)):
        pump = threading.Thread(target=_pump, args=(run, stream, sink, lock, is_stderr, echo), daemon=True)
        pump.start()
        run.pumps.append(pump)
    threading.Thread(target=_close_when_done, args=(run, sink), daemon=True).start()
    return run


def _pump(run: _Running, stream, sink, lock: threading.Lock, is_stderr: bool, echo: Echo | None) -> None:
    for raw in iter(stream.readline, b""):
        with lock:
            sink.write(raw)
            sink.flush()
        line = raw.decode("utf-8", "replace").rstrip()
        if is_stderr and line.strip():
            run.last_stderr[0] = line.strip()
        if echo:
            echo(f"[{run.command.label}] {line}")
    stream.close()


def _close_when_done(run: _Running, sink) -> None:
    for pump in run.pumps:
        pump.join()
    sink.close()


def finish(run: _Running) -> HostResult:
    for pump in run.pumps:
        pump.join()  # the last stderr line is only known once the pipes are drained
    code = run.process.returncode
    reason = "" if code == 0 else failure_reason(run, code)
    return HostResult(run.command.host, code, run.log, reason)


def failure_reason(run: _Running, code: int) -> str:
    """The first line of /opt/ml/output/failure (what SageMaker shows), else the last stderr line."""
    failure = run.command.root / "output" / "failure"
    if failure.is_file():
        lines = failure.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[0].strip()
    if run.last_stderr[0]:
        return run.last_stderr[0]
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def stop_others(running: Sequence[_Running], results: dict[str, HostResult]) -> None:
    alive = [r for r in running if r.command.host not in results and r.process.poll() is None]
    for run in alive:
        _signal_group(run.process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for run in alive:
        try:
            run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(run.process, signal.SIGKILL)
            run.process.wait()
    for run in running:
        if run.command.host in results:
            continue
        if run in alive:
            for pump in run.pumps:
                pump.join()
            results[run.command.host] = HostResult(run.command.host, None, run.log, "stopped: another host failed")
        else:  # it ended on its own meanwhile
            results[run.command.host] = finish(run)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group created for this host by start_new_session
    except ProcessLookupError:
        pass
