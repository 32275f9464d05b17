"""What a local execution looks like right now: its steps, and each simulated host's latest progress line and
memory. The runner writes it (execution.py: steps; hosts.py: the hosts' lines, memory and ends) and a display
(pipeline/display.py) reads snapshots of it, at its own pace. Thread-safe: the hosts' output pumps and the
runner's loop update it concurrently.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field


@dataclass
class HostState:
    name: str
    status: str = "running"  # running | done | failed | stopped
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None  # once ended
    progress: dict | None = None  # the last progress line's fields (steps.contract.PROGRESS_LINE)
    line: str = ""  # the last line it printed
    rss: int | None = None  # resident bytes now
    peak_rss: int | None = None
    starts: int = 0  # 2 or more: restarted after an injected fault


@dataclass
class StepState:
    name: str
    status: str = "NotStarted"  # NotStarted | Executing | Succeeded | Failed | Stopped | Skipped
    job: str = ""
    started: float | None = None
    seconds: float | None = None
    hosts: dict[str, HostState] = field(default_factory=dict)


class Watch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, StepState] = {}

    def planned(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                self._steps.setdefault(name, StepState(name))

    def step_started(self, name: str, job: str) -> None:
        with self._lock:
            self._steps[name] = StepState(name, "Executing", job, time.monotonic())

    def step_ended(self, name: str, status: str, seconds: float | None) -> None:
        with self._lock:
            step = self._steps.setdefault(name, StepState(name))
            step.status, step.seconds = status, seconds

    def host_started(self, step: str, host: str) -> None:
        with self._lock:
            hosts = self._steps.setdefault(step, StepState(step, "Executing")).hosts
            starts = hosts[host].starts if host in hosts else 0
            hosts[host] = HostState(host, starts=starts + 1)

    def host_line(self, step: str, host: str, line: str, progress: dict | None) -> None:
        with self._lock:
            state = self._host(step, host)
            state.line = line.strip()
            if progress:
                state.progress = progress

    def host_memory(self, step: str, host: str, rss: int, peak: int | None) -> None:
        with self._lock:
            state = self._host(step, host)
            state.rss, state.peak_rss = rss, peak

    def host_ended(self, step: str, host: str, status: str, seconds: float | None, peak: int | None) -> None:
        with self._lock:
            state = self._host(step, host)
            state.status, state.seconds, state.rss = status, seconds, None
            state.peak_rss = peak or state.peak_rss

    def snapshot(self) -> list[StepState]:
        """A copy of every step, in run order, that no runner thread changes afterwards."""
        with self._lock:
            return copy.deepcopy(list(self._steps.values()))

    def _host(self, step: str, host: str) -> HostState:
        hosts = self._steps.setdefault(step, StepState(step, "Executing")).hosts
        return hosts.setdefault(host, HostState(host))
