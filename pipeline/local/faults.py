"""Fault injection for local runs: stop or kill a simulated host (or the whole step) mid-work, and restart it as
spot restarts an interrupted job.

Delivered by the runner, from outside, at any moment (what SageMaker does: StopTrainingJob and spot's
interruption send SIGTERM, then SIGKILL 120 s later, whatever the host is doing):

    ALLPAIRS_FAULTS="Similarity:algo-2:at=3.5s"            SIGTERM to algo-2 3.5 s after it started; SIGKILL
                                                           120 s later if it has not exited by then
    ALLPAIRS_FAULTS="Similarity:algo-1:at=40%"             SIGTERM once algo-1 reports 40% of its share done
                                                           (its progress lines, steps/progress.py)
    ALLPAIRS_FAULTS="Similarity:algo-1:at=2s;signal=KILL"  SIGKILL: a host lost without warning
    ALLPAIRS_FAULTS="Similarity:algo-1:at=2s;grace=5"      SIGKILL 5 s after the SIGTERM instead of 120 s

Triggered by the host itself at an exact point of its checkpointing (steps/faults.py):

    ALLPAIRS_FAULTS="Similarity:algo-2:after-checkpoints=2"    dies (SIGKILL) right after its 2nd checkpoint write
    ALLPAIRS_FAULTS="Similarity:algo-1:during-checkpoint=1"    dies halfway through writing its 1st checkpoint
                                                               (a torn temp file is left behind)
    ALLPAIRS_FAULTS="Similarity:algo-2:hang-after-checkpoints=1"  stalls after its 1st checkpoint until stopped
                                                               (a hung host: not restarted; Ctrl-C or a failure
                                                               elsewhere stops it)
    append ";signal=TERM" to send SIGTERM instead of SIGKILL.

`*` for the host is the whole step: when algo-1 is hit, every other host is stopped with SIGTERM and all of
them start again, finished ones included. Separate several faults with commas. Each fault fires once: a
restarted host runs without it, keeping its checkpoints/ link, so it resumes from the shared checkpoints.
Read by run_local before anything runs (a malformed value is a usage error). Only training steps (the hosts
that checkpoint) take faults.
"""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Sequence

from pipeline.errors import LocalRunError, UsageError

FAULTS_ENV = "ALLPAIRS_FAULTS"
DEFAULT_GRACE_SECONDS = 120.0  # StopTrainingJob: SIGTERM, then termination 120 s later (API reference)
_HOST_SIDE = r"(?:after-checkpoints|during-checkpoint|hang-after-checkpoints)=[1-9]\d*(?:;signal=(?:KILL|TERM))?"
_TIMED = r"at=(?:\d+(?:\.\d+)?)(?:s|%)(?:;signal=(?:KILL|TERM))?(?:;grace=\d+(?:\.\d+)?)?"
_FAULT = re.compile(rf"([^:\s]+):(algo-[1-9]\d*|\*):({_HOST_SIDE}|{_TIMED})")


@dataclass(frozen=True)
class Timed:
    """A signal the runner sends: after `seconds`, or once the host reports `percent` of its share done."""

    seconds: float | None
    percent: float | None
    sig: int
    grace: float


@dataclass(frozen=True)
class Fault:
    step: str
    host: str  # "algo-N", or "*" for the whole step
    condition: str  # as written after STEP:HOST:

    @property
    def timed(self) -> Timed | None:
        """The runner-side trigger, or None for a host-side one (the host gets `condition` in its environment)."""
        match = re.fullmatch(r"at=(\d+(?:\.\d+)?)(s|%)(?:;signal=(KILL|TERM))?(?:;grace=(\d+(?:\.\d+)?))?",
                             self.condition)
        if not match:
            return None
        value, unit, sig, grace = match.groups()
        return Timed(float(value) if unit == "s" else None, float(value) if unit == "%" else None,
                     signal.SIGKILL if sig == "KILL" else signal.SIGTERM,
                     float(grace) if grace else DEFAULT_GRACE_SECONDS)

    @property
    def scope(self) -> str | None:
        """What the runner restarts when the fault fires: "host", "step", or None (a hang: nothing exits)."""
        if self.condition.startswith("hang-"):
            return None
        return "step" if self.host == "*" else "host"

    @property
    def trigger_host(self) -> str:
        return "algo-1" if self.host == "*" else self.host


def parse_faults(text: str | None, steps: Sequence) -> list[Fault]:
    """ALLPAIRS_FAULTS -> faults, checked against the definition's steps (StepPlan: name, type)."""
    faults = []
    types = {plan.name: plan.type for plan in steps}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        match = _FAULT.fullmatch(item)
        if not match:
            raise UsageError(f"{FAULTS_ENV}: {item!r} is not STEP:HOST:CONDITION; for example "
                             f"Similarity:algo-2:at=3.5s, Similarity:algo-1:at=40%;signal=KILL or "
                             f"Similarity:*:during-checkpoint=1;signal=TERM")
        step, host, condition = match.groups()
        if types.get(step) != "Training":
            training = ", ".join(name for name, kind in types.items() if kind == "Training") or "none"
            raise UsageError(f"{FAULTS_ENV}: {item!r}: faults apply to training steps (they checkpoint), and "
                             f"{step!r} is {'a ' + types[step] + ' step' if step in types else 'not a step'}; "
                             f"training steps: {training}")
        fault = Fault(step, host, condition)
        if fault.timed and fault.timed.percent is not None and fault.timed.percent > 100:
            raise UsageError(f"{FAULTS_ENV}: {item!r}: a share is at most 100% done")
        faults.append(fault)
    return faults


def host_faults(faults: Sequence[Fault], step: str, hosts: Sequence[str]) -> dict[str, Fault]:
    """The faults of `step`, by the host that triggers them; a host outside the job is an error."""
    out = {}
    for fault in faults:
        if fault.step != step:
            continue
        if fault.trigger_host not in hosts:
            raise LocalRunError(f"{FAULTS_ENV}: step {step} runs hosts algo-1..algo-{len(hosts)}, so "
                                f"{fault.host!r} cannot take a fault: name one of them")
        out[fault.trigger_host] = fault
    return out
