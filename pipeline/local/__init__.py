"""Run a compiled pipeline definition on this machine: simulated hosts are processes, S3 may be the local disk.

    definition (JSON) --plan_steps--> checked steps in order --run_local--> <workdir>/executions/<id>/

Reading the definition (expressions, parameters, step order) is pipeline/definition's; this package runs it:
storage (local paths, file://, s3://), hosts (concurrent processes), jobs (processing, training), execution
(run, resume, lock), interrupts (Ctrl-C), faults (ALLPAIRS_FAULTS fault injection).
"""
from .execution import (
    REGISTRY_ENV,
    REGISTRY_FILE,
    Execution,
    StepRecord,
    check_execution_id,
    overrides_from_mapping,
    read_registration,
    resume_local,
    run_local,
)

__all__ = [
    "REGISTRY_ENV",
    "REGISTRY_FILE",
    "Execution",
    "StepRecord",
    "check_execution_id",
    "overrides_from_mapping",
    "read_registration",
    "resume_local",
    "run_local",
]
