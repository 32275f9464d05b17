"""SageMaker service limits, checked offline on a compiled definition (the ones users otherwise meet at run time).

Values are checked as a job would receive them: parameters take their default (or the execution's value, for
`start`), the execution id its real length; a step property (an S3 URI known only at run time) counts as empty,
so a reported length is a lower bound and a reported violation is certain.
Limits: botocore's SageMaker service model (CreatePipeline, CreateProcessingJob, CreateTrainingJob).
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

from pipeline.errors import CompileError

from .expressions import EXECUTION_VARIABLES, Scope, parse_reference, references

STEP_NAME = re.compile(r"[A-Za-z0-9\-_]{1,64}")
MAX_DISPLAY_NAME, MAX_DESCRIPTION = 256, 3072
# Over 100 KB the SDK uploads the definition to the default bucket (an S3 call and a bucket we do not name);
# the service's own limit is 1 MiB.
MAX_DEFINITION_BYTES = 100 * 1024
MAX_PROCESSING_INPUTS, MAX_PROCESSING_OUTPUTS, MAX_CHANNELS = 10, 10, 20
MAX_METRIC_DEFINITIONS, MAX_METRIC_NAME, MAX_METRIC_REGEX = 40, 255, 500  # AlgorithmSpecification.MetricDefinitions
EXECUTION_ID_LENGTH = 12  # PipelineExecutionId, e.g. "a1b2c3d4e5f6"
# Execution variables as a job would see them; the id at its real length, the others (ARNs) unknown: empty.
_EXECUTION = {**{name: "" for name in EXECUTION_VARIABLES}, "PipelineExecutionId": "x" * EXECUTION_ID_LENGTH}

# (arguments field, kind, max entries, max key length, max value length)
_FIELDS = {
    "Processing": [
        ("AppSpecification.ContainerEntrypoint", "list", 100, None, 256),
        ("AppSpecification.ContainerArguments", "list", 100, None, 256),
        ("Environment", "map", 100, 256, 256),
    ],
    "Training": [
        ("HyperParameters", "map", 100, 256, 2500),
        ("Environment", "map", 100, 512, 512),
    ],
}

Where = Callable[[str | None], str]  # parameter name (or None) -> "pipeline.yaml:17: parameters.InputData"


def check_definition(text: str, values: Mapping[str, Any], where: Where) -> None:
    """Raise CompileError naming the spec line (or --param) to change for the first limit the definition breaks."""
    size = len(text.encode("utf-8"))
    if size > MAX_DEFINITION_BYTES:
        raise CompileError(f"{where(None)}: the compiled definition is {size} bytes, over {MAX_DEFINITION_BYTES} "
                           "(SageMaker would need it staged in S3); shorten parameter defaults and descriptions")
    definition = json.loads(text)
    for step in definition["Steps"]:
        _check_step(step, values, where)


def _check_step(step: Mapping, values: Mapping[str, Any], where: Where) -> None:
    name = step["Name"]
    if not STEP_NAME.fullmatch(name):
        raise CompileError(f"{where(None)}: step name {name!r} must be 1-64 letters, digits, '-' or '_' (a compiler bug)")
    for key, limit in (("DisplayName", MAX_DISPLAY_NAME), ("Description", MAX_DESCRIPTION)):
        if len(step.get(key) or "") > limit:
            raise CompileError(f"{where(None)}: step {name}: {key} is over {limit} characters (a compiler bug)")
    args = step.get("Arguments") or {}
    if step["Type"] == "Processing":
        _count(name, "ProcessingInputs", args.get("ProcessingInputs"), MAX_PROCESSING_INPUTS, where)
        outputs = (args.get("ProcessingOutputConfig") or {}).get("Outputs")
        _count(name, "ProcessingOutputConfig.Outputs", outputs, MAX_PROCESSING_OUTPUTS, where)
    elif step["Type"] == "Training":
        _count(name, "InputDataConfig", args.get("InputDataConfig"), MAX_CHANNELS, where)
        metrics = (args.get("AlgorithmSpecification") or {}).get("MetricDefinitions")
        _count(name, "AlgorithmSpecification.MetricDefinitions", metrics, MAX_METRIC_DEFINITIONS, where)
        for metric in metrics or []:
            if not 1 <= len(metric["Name"]) <= MAX_METRIC_NAME or not 1 <= len(metric["Regex"]) <= MAX_METRIC_REGEX:
                raise CompileError(f"{where(None)}: step {name}: metric {metric['Name'][:40]!r}: a name takes 1-"
                                   f"{MAX_METRIC_NAME} characters, a regex 1-{MAX_METRIC_REGEX} (a compiler bug)")
    for dotted, kind, max_entries, max_key, max_value in _FIELDS.get(step["Type"], []):
        container = _dig(args, dotted)
        if not container:
            continue
        _count(name, dotted, container, max_entries, where)
        items = container.items() if kind == "map" else enumerate(container)
        for key, node in items:
            label = f"{dotted}.{key}" if kind == "map" else f"{dotted}[{key}]"
            if max_key is not None and len(key) > max_key:
                raise CompileError(f"{where(None)}: step {name}: {label}: the key is over {max_key} characters")
            text, used = _render(node, values)
            if len(text) > max_value:
                parameter = used[0] if used else None
                what = f"the value of {parameter} " if parameter else ""
                raise CompileError(
                    f"{where(parameter)}: step {name} passes {what}in {label}: {len(text)} characters where "
                    f"SageMaker allows {max_value}; use a shorter value"
                )


def _count(step: str, field: str, items: Any, limit: int, where: Where) -> None:
    if items is not None and len(items) > limit:
        raise CompileError(f"{where(None)}: step {step}: {field} has {len(items)} entries, SageMaker allows {limit}")


def _dig(node: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _render(node: Any, values: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The text a job receives (step properties as empty), and the parameters it contains, longest first."""
    scope = Scope(values, _EXECUTION, properties={}, unknown_property="")
    text = plain_text(scope.resolve(node, "limits"))
    used = {head_name[1] for ref, _ in references(node, "limits")
            if (head_name := parse_reference(ref, "limits"))[0] == "Parameters"}
    return text, sorted(used, key=lambda name: -len(plain_text(values.get(name))))


def plain_text(value: Any) -> str:
    """A parameter value as SageMaker passes it: booleans lowercase, None empty, numbers as Python writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
