"""Pipeline expressions inside a definition ({"Get": ...}, {"Std:Join": ...}), resolved as SageMaker does."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterator, Mapping

from pipeline.errors import DefinitionError

# Execution variables a definition may reference (sagemaker ExecutionVariables).
EXECUTION_VARIABLES = (
    "PipelineExecutionId",
    "PipelineName",
    "PipelineArn",
    "PipelineExecutionArn",
    "StartDateTime",
    "CurrentDateTime",
)
# These two only mean something inside a step of the matching type.
JOB_NAME_VARIABLES = {"ProcessingJobName": "Processing", "TrainingJobName": "Training"}


def bug(where: str, what: str) -> DefinitionError:
    return DefinitionError(
        f"{where}: {what}; the compiled definition and pipeline/local disagree: report this as a bug in one of them"
    )


def expression_kind(node: object) -> str | None:
    """'Get', 'Std:Join', ... when `node` is a pipeline expression, else None (a plain value or container)."""
    if isinstance(node, dict) and len(node) == 1:
        (key,) = node
        if key == "Get" or key.startswith("Std:"):
            return key
    return None


def normalize_property_path(path: str) -> str:
    """Outputs["x"] and Outputs['x'] name the same property; keep one spelling."""
    return re.sub(r'\["([^"\]]*)"\]', r"['\1']", path)


def parse_reference(reference: object, where: str) -> tuple[str, str, str]:
    """'Parameters.X' -> ('Parameters', 'X', ''); 'Steps.S.a.b' -> ('Steps', 'S', 'a.b')."""
    if not isinstance(reference, str):
        raise bug(where, f"Get expects a string, found {reference!r}")
    head, _, rest = reference.partition(".")
    if head == "Steps":
        step, _, path = rest.partition(".")
        if step and path:
            return head, step, normalize_property_path(path)
    elif head in ("Parameters", "Execution") and rest:
        return head, rest, ""
    raise bug(where, f'unknown reference "{reference}" (expected Parameters.X, Execution.X or Steps.X.<property>)')


def join_spec(node: Mapping, where: str) -> tuple[str, list]:
    spec = node["Std:Join"]
    if not isinstance(spec, dict) or not isinstance(spec.get("On"), str) or not isinstance(spec.get("Values"), list):
        raise bug(where, f"Std:Join needs {{\"On\": string, \"Values\": list}}, found {spec!r}")
    return spec["On"], spec["Values"]


def references(node: object, where: str) -> Iterator[tuple[str, str]]:
    """Every Get reference under `node`, with its JSON path; rejects expressions the runner cannot evaluate."""
    kind = expression_kind(node)
    if kind == "Get":
        yield node["Get"], where
    elif kind == "Std:Join":
        _, values = join_spec(node, where)
        for i, value in enumerate(values):
            yield from references(value, f"{where}.Std:Join.Values[{i}]")
    elif kind is not None:
        raise unsupported(kind, where)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from references(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from references(value, f"{where}[{i}]")


def unsupported(kind: str, where: str) -> DefinitionError:
    if kind == "Std:JsonGet":
        return bug(where, "Std:JsonGet (a property-file lookup) is not supported by the local runner")
    return bug(where, f'unknown expression "{kind}"')


def static_type(node: object, parameter_types: Mapping[str, str]) -> str:
    """The type a node will have once resolved: what SageMaker checks against the field's type at run time."""
    kind = expression_kind(node)
    if kind == "Get":
        head, name, _ = parse_reference(node["Get"], "")
        return parameter_types.get(name, "String") if head == "Parameters" else "String"
    if kind == "Std:Join" or isinstance(node, str):
        return "String"
    if isinstance(node, bool):
        return "Boolean"
    if isinstance(node, int):
        return "Integer"
    if isinstance(node, float):
        return "Float"
    return type(node).__name__


def join_text(value: object, where: str) -> str:
    """How a value reads inside Std:Join: ints as ints, floats as 0.5, booleans lowercase."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise bug(where, f"Std:Join value {value!r} is not a string, number or boolean")


class Scope:
    """What a Get can see: parameters, execution variables, finished steps' properties, the current job name."""

    def __init__(
        self,
        parameters: Mapping[str, object],
        execution: Mapping[str, str],
        properties: Mapping[str, Mapping[str, object]],
        job_name: tuple[str, str] | None = None,
        unknown_property: str | None = None,
    ):
        self.parameters = parameters
        self.execution = execution
        self.properties = properties
        self.job_name = job_name  # ("TrainingJobName", "allpairs-similarity-3f9a1c") inside that step
        self.unknown_property = unknown_property  # what a step property not known yet reads as (None: an error)

    def for_job(self, variable: str, name: str) -> "Scope":
        return Scope(self.parameters, self.execution, self.properties, (variable, name), self.unknown_property)

    def get(self, reference: object, where: str) -> object:
        head, name, path = parse_reference(reference, where)
        if head == "Parameters" and name in self.parameters:
            return self.parameters[name]
        if head == "Execution":
            if name == "CurrentDateTime":
                return utc_text(datetime.now(timezone.utc))
            if self.job_name and name == self.job_name[0]:
                return self.job_name[1]
            if name in self.execution:
                return self.execution[name]
        if head == "Steps" and path in self.properties.get(name, {}):
            return self.properties[name][path]
        if head == "Steps" and self.unknown_property is not None:
            return self.unknown_property
        raise bug(where, f'"{reference}" does not resolve at run time')

    def resolve(self, node: object, where: str) -> object:
        kind = expression_kind(node)
        if kind == "Get":
            return self.get(node["Get"], where)
        if kind == "Std:Join":
            on, values = join_spec(node, where)
            parts = (self.resolve(v, f"{where}.Std:Join.Values[{i}]") for i, v in enumerate(values))
            return on.join(join_text(p, where) for p in parts)
        if kind is not None:
            raise unsupported(kind, where)
        if isinstance(node, dict):
            return {key: self.resolve(value, f"{where}.{key}") for key, value in node.items()}
        if isinstance(node, list):
            return [self.resolve(value, f"{where}[{i}]") for i, value in enumerate(node)]
        return node


def utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
