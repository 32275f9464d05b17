"""Facts about SageMaker instance types, in one place (steps/instances.json): memory, vCPUs, price. Read by the
similarity step's memory check and by the planner (`python -m pipeline plan`, the fit check of `run` and
`start`), so both judge "does it fit" with the same numbers. Depends on nothing of ours: pipeline/ may import it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("instances.json")
PROGRAM_MB = 256  # the interpreter, numpy and the kernel's bookkeeping, beside the matrix and the score budget
OS_SHARE = 0.1  # of an instance's memory, left to the operating system and SageMaker's agents


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: int
    on_demand_per_hour: float  # USD, in the data file's region
    cores: int  # physical cores: vcpus / threads_per_core

    @property
    def usable_mb(self) -> int:
        """Memory a job's program may use."""
        return int(self.memory_gib * 1024 * (1 - OS_SHARE))


@dataclass(frozen=True)
class Facts:
    types: tuple[InstanceType, ...]  # by memory, smallest first
    region: str
    date: str
    currency: str
    spot_savings: float  # the share of the on-demand price spot is assumed to save

    def get(self, name: str) -> InstanceType | None:
        return next((t for t in self.types if t.name == name), None)


@lru_cache(maxsize=1)
def facts() -> Facts:
    doc = json.loads(DATA.read_text())
    per_core = int(doc["threads_per_core"])
    types = tuple(InstanceType(t["name"], int(t["vcpus"]), int(t["memory_gib"]), float(t["on_demand_per_hour"]),
                               max(1, int(t["vcpus"]) // per_core)) for t in doc["types"])
    return Facts(types, doc["region"], doc["date"], doc["currency"], float(doc["spot_savings"]))
