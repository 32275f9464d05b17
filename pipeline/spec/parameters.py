"""The runtime parameters of the pipeline: ONE table, read by the spec (defaults and their checks), the compiler
(the definition's parameters, in this order), `run` and `start` (a value given at the command line).

A value is checked once, where it enters: a default or local override when the spec is loaded, a --param
value when the command line is read (typed by the definition, then by `value_problem`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.contract import ALL_PAIRS_MODE, APPROVAL_STATUSES, MIN_SCORE_PARAMETER, QUERIES_MODE, TOP_K_PARAMETER

from .checks import INSTANCE_TYPE, Check, Invalid, choice, has_scheme, integer, location, number, pattern, s3_uri, show

REQUIRED = object()  # a default the spec must give


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # the definition's type: String | Integer | Float
    default: Any  # REQUIRED, a value, or None for one derived from the spec (ModelPackageGroup: the name)
    cloud: Check  # what a value must be for a cloud execution (the spec's default, start --param)
    local: Check  # what it may be on this machine (local.parameters, run --param)
    help: str  # what it is, for the README's table and messages
    purpose: str = ""  # why its range holds, said when a value is refused
    path: bool = False  # a data location: relative paths are made absolute where they are given
    local_limit: str = ""  # why a local run takes less than the cloud, said when only the local check refuses
    modes: tuple[str, ...] = (ALL_PAIRS_MODE, QUERIES_MODE)  # the spec's modes whose definition has it


# A local run simulates each similarity host as a process of this machine, each memory-mapping the matrix and
# taking up to memory_budget_mb of its own: a limit, so InstanceCount=1000 is a message, not 1000 processes.
LOCAL_MAX_HOSTS = 64

_MODEL_PACKAGE_GROUP = pattern(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}",
                               "a model package group name: letters, digits and hyphens, at most 63 characters")

PARAMETERS: tuple[Parameter, ...] = (
    Parameter("InputData", "String", REQUIRED, s3_uri(False), location(False),
              "the matrix: a file or a prefix (`s3://...`; locally also a path or `file://`)", path=True),
    Parameter("OutputPrefix", "String", REQUIRED, s3_uri(True), location(True),
              "each execution writes under `<OutputPrefix>/<execution id>/`", path=True),
    Parameter("InstanceCount", "Integer", 1, integer(1, 1000), integer(1, LOCAL_MAX_HOSTS), "similarity hosts",
              "the number of similarity hosts",
              local_limit=f"a local run starts one process per host on this machine, so at most {LOCAL_MAX_HOSTS}: "
                          "run more hosts in the cloud (python -m pipeline start)"),
    Parameter("InstanceType", "String", REQUIRED, INSTANCE_TYPE, INSTANCE_TYPE, "their instance type"),
    Parameter(TOP_K_PARAMETER, "Integer", 10, integer(1, 100000), integer(1, 100000), "neighbours per row",
              "the number of neighbours kept per row"),
    Parameter(MIN_SCORE_PARAMETER, "Float", -1.0, number(-1, 1), number(-1, 1),
              "keep pairs with score >= MinScore (inclusive); `-1.0`, the default, keeps everything",
              "cosine scores lie in [-1, 1]; -1 keeps every pair"),
    Parameter("ModelPackageGroup", "String", None, _MODEL_PACKAGE_GROUP, _MODEL_PACKAGE_GROUP,
              "the model package group the artifact is registered in (default: the pipeline name)"),
    Parameter("ApprovalStatus", "String", APPROVAL_STATUSES[0], choice(APPROVAL_STATUSES),
              choice(APPROVAL_STATUSES), "`PendingManualApproval`, `Approved` or `Rejected`"),
    # Required in queries mode (its default must be given then), absent from the self-join's definition: a
    # definition's parameter cannot be empty, so the mode is chosen in the spec, not at start time.
    Parameter("QueryData", "String", None, s3_uri(False), location(False),
              "queries mode: the query rows, a file or a prefix like InputData (each gets its top-k among InputData)",
              path=True, modes=(QUERIES_MODE,)),
)
BY_NAME = {p.name: p for p in PARAMETERS}
PARAMETER_NAMES: tuple[str, ...] = tuple(BY_NAME)


def parameters_of(mode: str) -> tuple[Parameter, ...]:
    """The parameters a definition of this mode has, in the table's order."""
    return tuple(p for p in PARAMETERS if mode in p.modes)


def value_problem(name: str, value: Any, *, local: bool) -> str | None:
    """'<Name> must be <expected>, got <value> (<why>)' when a typed parameter value is out of range, else None.
    `local` allows plain paths for the data locations."""
    parameter = BY_NAME.get(name)
    if parameter is None:
        return None
    try:
        (parameter.local if local else parameter.cloud)(value)
        return None
    except Invalid as exc:
        limit = parameter.local_limit if local and parameter.local_limit and _passes(parameter.cloud, value) else ""
        why = f" ({'; '.join(filter(None, (parameter.purpose, limit)))})" if parameter.purpose or limit else ""
        shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else show(value)
        return f"{name} must be {exc.expected}, got {shown}{why}"


def _passes(check: Check, value: Any) -> bool:
    try:
        check(value)
        return True
    except Invalid:
        return False


def absolute_location(name: str, value: Any, base: Path) -> Any:
    """A path parameter's value made absolute against `base` (the spec's folder, or the working directory for
    a --param); URIs (s3://, file://) and other parameters are returned as they are."""
    parameter = BY_NAME.get(name)
    if parameter is None or not parameter.path or not isinstance(value, str) or has_scheme(value) or not value:
        return value
    return str((base / Path(value).expanduser()).resolve())
