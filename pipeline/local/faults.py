"""Fault injection for local runs: kill a simulated host (or the whole step) mid-work and restart it, as spot does.

    ALLPAIRS_FAULTS="Similarity:algo-2:after-checkpoints=2"    algo-2 dies (SIGKILL) right after its 2nd checkpoint
                                                               write; the runner starts it again, alone
    ALLPAIRS_FAULTS="Similarity:algo-1:during-checkpoint=1"    algo-1 dies halfway through writing its 1st checkpoint
                                                               (a torn temp file is left behind)
    ALLPAIRS_FAULTS="Similarity:*:after-checkpoints=1"         the whole step: when algo-1 reaches it, every other
                                                               host is stopped with SIGTERM (spot's warning) and
                                                               all hosts start again, finished ones included
    ALLPAIRS_FAULTS="Similarity:algo-2:hang-after-checkpoints=1"  algo-2 stalls after its 1st checkpoint until stopped
                                                               (a hung host: not restarted; Ctrl-C or a failure
                                                               elsewhere stops it)
    append ";signal=TERM" to a fault to send SIGTERM instead of SIGKILL; separate several faults with commas.

Read by run_local before anything runs (a malformed value is a usage error). Each fault fires once: a restarted
host runs without it. The amount of work is counted in checkpoint writes (the host's own, see
steps/checkpoints.py), so the kill point is exact, not a race against a timer; set
`similarity.checkpoint_seconds: 0` in pipeline.yaml to checkpoint after every block. The restarted hosts keep
their checkpoints/ link, so they resume from the shared checkpoint directory. Only training steps (the hosts that checkpoint)
take faults.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from pipeline.errors import LocalRunError, UsageError

FAULTS_ENV = "ALLPAIRS_FAULTS"
_FAULT = re.compile(r"([^:\s]+):(algo-[1-9]\d*|\*):"
                    r"((?:after-checkpoints|during-checkpoint|hang-after-checkpoints)=[1-9]\d*(?:;signal=(?:KILL|TERM))?)")


@dataclass(frozen=True)
class Fault:
    step: str
    host: str  # "algo-N", or "*" for the whole step
    condition: str  # what the host gets in steps.checkpoints.FAULT_ENV

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
                             f"Similarity:algo-2:after-checkpoints=2 or Similarity:*:during-checkpoint=1;signal=TERM")
        step, host, condition = match.groups()
        if types.get(step) != "Training":
            training = ", ".join(name for name, kind in types.items() if kind == "Training") or "none"
            raise UsageError(f"{FAULTS_ENV}: {item!r}: faults apply to training steps (they checkpoint), and "
                             f"{step!r} is {'a ' + types[step] + ' step' if step in types else 'not a step'}; "
                             f"training steps: {training}")
        faults.append(Fault(step, host, condition))
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
