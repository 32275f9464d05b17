"""Run a compiled pipeline definition on this machine: simulated hosts are processes, S3 may be the local disk.

    definition (JSON) --plan_steps--> checked steps in order --run_local--> <workdir>/executions/<id>/

Package layout: expressions (Get / Std:Join), parameters (typed overrides), plan (checks + order),
storage (local paths, file://, s3://), hosts (concurrent processes), jobs (processing, training), execution
(run, resume, lock), interrupts (Ctrl-C), faults (ALLPAIRS_FAULTS fault injection).
"""
from .execution import (
    REGISTRY_ENV,
    REGISTRY_FILE,
    Execution,
    StepRecord,
    overrides_from_mapping,
    read_registration,
    resume_local,
    run_local,
)
from .expressions import DefinitionError, Scope
from .parameters import ParameterOverride, parse_param_args, resolve_parameters
from .plan import StepPlan, load_definition, plan_steps

__all__ = [
    "REGISTRY_ENV",
    "REGISTRY_FILE",
    "DefinitionError",
    "Execution",
    "ParameterOverride",
    "Scope",
    "StepPlan",
    "StepRecord",
    "load_definition",
    "overrides_from_mapping",
    "parse_param_args",
    "plan_steps",
    "read_registration",
    "resolve_parameters",
    "resume_local",
    "run_local",
]
