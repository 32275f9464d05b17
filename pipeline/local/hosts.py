"""Run a step's simulated hosts as concurrent processes, each logging to its own root.

Stopping a host is what SageMaker does (StopTrainingJob, a failed job's other hosts, spot): SIGTERM, then
SIGKILL STOP_GRACE_SECONDS (120 s) later if it is still there. A second Ctrl-C kills at once.

Each host's memory is its resident set (file pages of the memory-mapped matrix included), read from
/proc/<pid>/status while it runs: VmRSS now (for the watch, the live display) and VmHWM, the kernel's high-water
mark of the process, which after any read past the peak is the peak itself (the execution record). Not wait4's
ru_maxrss: on Linux a child's starts from the resident size of the runner it was forked from.

Restarts (fault injection, pipeline/local/faults.py): a host hit by a fault (a signal the runner sends at a
time or a share of the work, or one it sends itself after printing steps.contract.FAULT_MARKER) is started
again once it has exited, with the same root (its `fresh` folders emptied, as on a new instance) and without
the fault; for a whole-step fault every other host is first stopped with SIGTERM (spot's warning), and then
all of them start again. The shared checkpoints/ link is untouched, so the restarted hosts resume from it.

A dying runner takes its hosts with it: each host inherits the execution lock and gets SIGTERM from the kernel
when the runner dies, however it dies (die_with_runner).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from steps.contract import FAULT_MARKER, HOST_FAULT_ENV, PROGRESS_LINE

from .faults import DEFAULT_GRACE_SECONDS, Timed
from .interrupts import STOP
from .lock import ExecutionLock
from .watch import Watch

LOG_NAME = "job.log"  # in each host's root, beside what the container sees as /opt/ml
STOP_GRACE_SECONDS = DEFAULT_GRACE_SECONDS  # SIGTERM, then SIGKILL this much later, as SageMaker does
WATCH_MEMORY_SECONDS = 0.5  # how often a running host's memory is handed to the watch (it is read every tick)

Echo = Callable[[str], None]


@dataclass
class HostCommand:
    host: str
    label: str  # "Similarity algo-2": prefixes echoed lines
    argv: list[str]
    env: dict[str, str]
    root: Path  # the host's ALLPAIRS_OPT_ML
    failure_file: str  # relative to root: where this job type's failure reason is read (steps.contract.FAILURE_FILES)
    fresh: tuple[Path, ...] = ()  # emptied before a restart: what a new instance would not have (model/, output/)
    timed: Timed | None = None  # a fault the runner delivers (ALLPAIRS_FAULTS at=...)
    cpus: frozenset[int] | None = None  # the cores it runs on (core_shares); None: all of them
    step: str = ""  # the step it belongs to, for the watch


# Thread pools that size themselves from the environment rather than from the CPU set.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def core_shares(hosts: int) -> list[frozenset[int] | None]:
    """Each of `hosts` simulated hosts' own cores, as each SageMaker host has its own instance: the cores this
    process may use, split into even contiguous runs (hosts beyond the cores share them round-robin). Without
    this, 4 hosts on 2 cores each start 2 workers and BLAS threads: CPU figures measure oversubscription."""
    if not hasattr(os, "sched_setaffinity"):  # not Linux: the hosts share every core
        return [None] * hosts
    cores = sorted(os.sched_getaffinity(0))
    if hosts >= len(cores):
        return [frozenset({cores[i % len(cores)]}) for i in range(hosts)]
    return [frozenset(cores[i * len(cores) // hosts: (i + 1) * len(cores) // hosts]) for i in range(hosts)]


def pinned(env: Mapping[str, str], cpus: frozenset[int] | None) -> dict[str, str]:
    """`env` with thread pools sized to `cpus` (a value the user set is kept)."""
    env = dict(env)
    if cpus is not None:
        for name in _THREAD_ENV:
            env.setdefault(name, str(len(cpus)))
    return env


@dataclass
class HostResult:
    host: str
    exit_code: int | None  # None: stopped because another host failed
    log: Path
    reason: str = ""  # why it failed, one line
    restarts: int = 0  # times it was killed by an injected fault and started again
    seconds: float | None = None  # its last start to its exit
    peak_rss: int | None = None  # bytes: the most resident memory it held (None: not measurable here)
    progress: dict | None = None  # its last progress line's fields (steps.contract.PROGRESS_LINE)


@dataclass(eq=False)
class _Running:
    command: HostCommand
    process: subprocess.Popen
    log: Path
    last_line: str = ""  # the last line the host wrote, set by the log reader
    pumps: list[threading.Thread] = field(default_factory=list)  # the log reader
    fault_fired: bool = False  # set by the log reader on FAULT_MARKER, or when the runner delivers the timed fault
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    percent: float = 0.0  # the host's last progress line
    progress: dict | None = None  # that line's fields
    kill_at: float | None = None  # SIGKILL deadline after a SIGTERM the runner sent
    peak_rss: int | None = None  # bytes: its high-water resident set, as last read
    watched: float = 0.0  # when its memory was last handed to the watch
    ended: float | None = None  # when it was seen to have exited
    watch: Watch | None = None

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def sample_memory(self, now: float) -> None:
        """Read its resident memory (Linux /proc; elsewhere nothing is known); tell the watch now and then."""
        rss = resident_bytes(self.process.pid)
        if rss is None:
            return
        self.peak_rss = max(self.peak_rss or 0, rss[1])
        if self.watch and now - self.watched >= WATCH_MEMORY_SECONDS:
            self.watched = now
            self.watch.host_memory(self.command.step, self.command.host, rss[0], self.peak_rss)


def resident_bytes(pid: int) -> tuple[int, int] | None:
    """(resident now, peak resident) of a live process, from /proc/<pid>/status; None where there is none."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


def run_hosts(commands: Sequence[HostCommand], cwd: Path, echo: Echo | None = None,
              restart_scope: Mapping[str, str] | None = None, collect: list | None = None,
              lock: ExecutionLock | None = None, watch: Watch | None = None) -> list[HostResult]:
    """Start every host, wait for all; the first failure stops the others (as a failed training job does).
    `restart_scope` maps a host given a fault to "host" (restart it alone) or "step" (restart every host);
    `collect` receives the results even when this raises (Ctrl-C), for the execution record; every host
    inherits `lock`, the execution's (pipeline/local/lock.py); `watch` is told each host's lines, memory and
    end as they happen."""
    running = [start(command, cwd, echo, lock, watch) for command in commands]
    results: dict[str, HostResult] = {}
    pending = dict(restart_scope or {})
    try:
        while len(results) < len(running):
            if STOP.requested:  # Ctrl-C, SIGTERM, SIGHUP: stop the hosts; if all of them finished anyway, the job did
                stop_others(running, results, "stopped: the run was interrupted")
                if all(r.exit_code == 0 for r in results.values()):
                    break
                STOP.raise_if_requested()
            deliver_timed_faults(running, results)
            now = time.monotonic()
            for i, run in enumerate(running):
                if run.command.host in results:
                    continue
                if run.poll() is None:
                    run.sample_memory(now)
                    continue
                for pump in run.pumps:  # its last lines (a fault marker) are read before deciding what it was
                    pump.join()
                scope = pending.pop(run.command.host, None)
                if scope and run.fault_fired:
                    running = restart_after_fault(running, i, results, cwd, echo, scope, lock, watch)
                    break
                results[run.command.host] = finish(run)
                if run.process.returncode != 0:
                    stop_others(running, results)
            time.sleep(0.05)
    except BaseException:
        stop_others(running, results, grace=0.0 if STOP.insisted else STOP_GRACE_SECONDS)
        raise
    finally:
        if collect is not None:
            collect[:] = [results[c.host] for c in commands if c.host in results]
    return [results[c.host] for c in commands]


def deliver_timed_faults(running: Sequence[_Running], results: Mapping[str, HostResult]) -> None:
    """Send each due fault's signal, and the SIGKILL that follows an unanswered SIGTERM."""
    now = time.monotonic()
    for run in running:
        if run.command.host in results or run.poll() is not None:
            continue
        timed = run.command.timed
        if timed and not run.fault_fired and (
                (timed.seconds is not None and now - run.started >= timed.seconds)
                or (timed.percent is not None and run.percent >= timed.percent)):
            run.fault_fired = True
            _log_line(run.log, f"--- {run.command.label}: {signal.Signals(timed.sig).name} from the runner "
                               f"(ALLPAIRS_FAULTS) {now - run.started:.3f} s after it started ---")
            _signal_group(run.process, timed.sig)
            if timed.sig == signal.SIGTERM:
                run.kill_at = now + timed.grace
        elif run.kill_at is not None and now >= run.kill_at:
            _log_line(run.log, f"--- {run.command.label}: still running {timed.grace if timed else ''} s after "
                               "SIGTERM: SIGKILL ---")
            _signal_group(run.process, signal.SIGKILL)
            run.kill_at = None


def restart_after_fault(running: list[_Running], i: int, results: dict[str, HostResult], cwd: Path,
                        echo: Echo | None, scope: str, lock: ExecutionLock | None = None,
                        watch: Watch | None = None) -> list[_Running]:
    """The host at `i` was killed by its injected fault: start it again (scope "host"), or stop every host and
    start them all again (scope "step"), each without its fault."""
    if scope == "step":
        stop_others(running, results, "stopped: the whole step is restarted")
        results.clear()
        again = list(range(len(running)))
    else:
        again = [i]
    running = list(running)
    for j in again:
        old = running[j]
        for pump in old.pumps:
            pump.join()
        command = without_fault(old.command)
        _log_line(old.log, f"--- {old.command.label}: restarted after an injected fault, as spot restarts it ---")
        if echo:
            echo(f"[{old.command.label}] restarted after an injected fault (ALLPAIRS_FAULTS)")
        for folder in command.fresh:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        running[j] = start(command, cwd, echo, lock, watch)
        running[j].restarts = old.restarts + 1
        running[j].peak_rss = old.peak_rss  # the host's peak over its restarts
    return running


def without_fault(command: HostCommand) -> HostCommand:
    env = {k: v for k, v in command.env.items() if k != HOST_FAULT_ENV}
    return replace(command, env=env, timed=None)


def _log_line(log: Path, line: str) -> None:
    with open(log, "ab") as f:
        f.write(line.encode() + b"\n")


def start(command: HostCommand, cwd: Path, echo: Echo | None, lock: ExecutionLock | None = None,
          watch: Watch | None = None) -> _Running:
    """Start one host. Its stdout and stderr go straight to its job.log (not through a pipe to the runner), so
    a host that outlives its runner still logs, and its last writes (a checkpoint saved, the failure reason) do
    not fail on a broken pipe; the runner reads the log as it grows."""
    log = command.root / LOG_NAME
    command.root.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        offset = sink.tell()
        process = subprocess.Popen(
            command.argv,
            cwd=cwd,
            env=command.env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping a host also stops what it spawned
            pass_fds=(lock.fd,) if lock else (),  # the execution stays locked while the host lives
            preexec_fn=host_setup(command.cpus),
        )
    if lock:
        lock.note(process.pid, command.label)
    run = _Running(command, process, log, watch=watch)
    if watch:
        watch.host_started(command.step, command.host)
    reader = threading.Thread(target=_follow, args=(run, offset, echo), daemon=True)
    reader.start()
    run.pumps.append(reader)
    return run


def _follow(run: _Running, offset: int, echo: Echo | None) -> None:
    """Read the host's lines from its log as they are written, until it has exited and all is read."""
    with open(run.log, "rb") as log:
        log.seek(offset)
        pending = b""
        while True:
            exited = run.process.poll() is not None  # checked before reading: nothing written after is missed
            pending += log.read()
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                _take_line(run, raw, echo)
            if exited:
                if pending:
                    _take_line(run, pending, echo)
                return
            if not lines:
                time.sleep(0.05)


def _take_line(run: _Running, raw: bytes, echo: Echo | None) -> None:
    line = raw.decode("utf-8", "replace").rstrip()
    if line.strip():
        run.last_line = line.strip()
    if FAULT_MARKER in line:
        run.fault_fired = True
    progress = PROGRESS_LINE.search(line)
    if progress:
        run.percent = float(progress["percent"])
        run.progress = progress.groupdict()
    if run.watch and line.strip():
        run.watch.host_line(run.command.step, run.command.host, line, run.progress if progress else None)
    if echo:
        echo(f"[{run.command.label}] {line}")


def finish(run: _Running) -> HostResult:
    for pump in run.pumps:
        pump.join()  # the last line is only known once the log is read to its end
    code = run.process.returncode
    reason = "" if code == 0 else failure_reason(run, code)
    return ended(run, HostResult(run.command.host, code, run.log, reason, run.restarts))


def ended(run: _Running, result: HostResult) -> HostResult:
    """The result with what was measured of the host, told to the watch."""
    result.seconds = round((run.ended or time.monotonic()) - run.started, 3)
    result.peak_rss, result.progress = run.peak_rss, run.progress
    if run.watch:
        status = "done" if result.exit_code == 0 else "stopped" if result.exit_code is None else "failed"
        run.watch.host_ended(run.command.step, run.command.host, status, result.seconds, run.peak_rss)
    return result


def failure_reason(run: _Running, code: int) -> str:
    """The first line of the job type's failure file (what SageMaker shows), else how it died: the signal, or
    the last line it wrote (a crash's traceback ends with the exception)."""
    failure = run.command.root / run.command.failure_file
    if failure.is_file():
        lines = failure.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[0].strip()
    if code < 0:
        return f"killed by signal {-code}"
    return run.last_line or f"exit code {code}"


def stop_others(running: Sequence[_Running], results: dict[str, HostResult],
                why: str = "stopped: another host failed", grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every host still running, SIGKILL those still there after `grace` seconds."""
    alive = [r for r in running if r.command.host not in results and r.poll() is None]
    now = time.monotonic()
    for run in alive:
        run.sample_memory(now)  # its peak so far: once stopped, /proc has nothing left to read
        _signal_group(run.process, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace
    for run in alive:
        try:
            run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(run.process, signal.SIGKILL)
            run.process.wait()
    for run in running:
        if run.command.host in results:
            continue
        if run in alive and run.process.returncode != 0:
            for pump in run.pumps:
                pump.join()
            results[run.command.host] = ended(run, HostResult(run.command.host, None, run.log, why, run.restarts))
        else:  # it ended on its own meanwhile
            results[run.command.host] = finish(run)


def host_setup(cpus: frozenset[int] | None):
    """The host's preexec_fn: it dies with the runner (die_with_runner) and runs on its own cores (`cpus`, set
    before it starts a thread: a mask set after exec would miss the threads started by then)."""
    die = die_with_runner()
    if cpus is None:
        return die

    def preexec() -> None:
        os.sched_setaffinity(0, cpus)
        if die is not None:
            die()

    return preexec


def die_with_runner():
    """A preexec_fn that has the kernel send the host SIGTERM when the runner dies, however it dies (SIGKILL, OOM
    killer): Linux's PR_SET_PDEATHSIG, set between fork and exec (it survives exec). SIGTERM is SageMaker's
    stop, which every step honours: Similarity checkpoints its finished rows, Preprocess and Merge remove
    their staging, nothing is published (only the runner publishes). A host in its own session would
    otherwise run on, orphaned. None elsewhere (macOS has no such call): there the execution lock, which every
    host inherits, still keeps a resume from running alongside orphans."""
    if _PRCTL is None:
        return None
    runner = os.getpid()

    def preexec() -> None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != runner:  # the runner died before the call took effect: the kernel will not tell us
            os._exit(1)

    return preexec


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up once, here: the child only calls it
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PRCTL = _load_prctl()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group created for this host by start_new_session
    except ProcessLookupError:
        pass
