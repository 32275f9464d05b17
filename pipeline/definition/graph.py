"""Check a whole definition before running anything, and put its steps in dependency order."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from .expressions import (
    EXECUTION_VARIABLES,
    JOB_NAME_VARIABLES,
    DefinitionError,
    bug,
    parse_reference,
    references,
    static_type,
)
from .parameters import parameter_types

SUPPORTED_STEP_TYPES = ("Processing", "Training")

# Fields SageMaker types as strings: an Integer parameter placed here unconverted fails the job in the cloud.
STRING_FIELDS = {
    "Processing": ("AppSpecification.ContainerEntrypoint", "AppSpecification.ContainerArguments", "Environment"),
    "Training": (
        "AlgorithmSpecification.ContainerEntrypoint",
        "AlgorithmSpecification.ContainerArguments",
        "HyperParameters",
        "Environment",
    ),
}


@dataclass(frozen=True)
class StepPlan:
    name: str
    type: str
    arguments: dict  # unresolved: expressions are evaluated just before the step runs
    depends_on: tuple[str, ...]
    properties: tuple[str, ...]  # property paths the step will publish, e.g. ModelArtifacts.S3ModelArtifacts


def load_definition(definition: str | Mapping) -> dict:
    if isinstance(definition, Mapping):
        return dict(definition)
    try:
        loaded = json.loads(definition)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"definition: not valid JSON ({exc}); print it with `python -m pipeline definition`") from exc
    if not isinstance(loaded, dict) or not isinstance(loaded.get("Steps"), list):
        raise DefinitionError('definition: expected a JSON object with a "Steps" list; print it with `python -m pipeline definition`')
    return loaded


def plan_steps(definition: Mapping) -> list[StepPlan]:
    """Steps in run order, after checking every reference resolves to a known parameter, step or property."""
    raw_steps = definition["Steps"]
    declared = {step_name(raw, i): raw for i, raw in enumerate(raw_steps)}
    if len(declared) != len(raw_steps):
        raise bug("definition", "two steps share a name")
    properties = {name: declared_properties(name, raw) for name, raw in declared.items()}
    types = parameter_types(definition)
    plans = []
    for name, raw in declared.items():
        upstream = check_references(name, raw, types, properties)
        check_string_fields(name, raw, types)
        for other in raw.get("DependsOn") or []:
            if other not in declared:
                raise bug(f"step {name}, DependsOn", f'unknown step "{other}"')
            upstream.append(other)
        plans.append(StepPlan(name, raw["Type"], raw.get("Arguments") or {}, tuple(dict.fromkeys(upstream)), properties[name]))
    return topological_order(plans)


def step_name(raw: Mapping, index: int) -> str:
    name = raw.get("Name")
    if not isinstance(name, str) or not name:
        raise bug(f"Steps[{index}]", "step has no Name")
    if raw.get("Type") not in SUPPORTED_STEP_TYPES:
        raise bug(f"step {name}", f'type "{raw.get("Type")}" is not run locally (supported: {", ".join(SUPPORTED_STEP_TYPES)})')
    return name


def declared_properties(name: str, raw: Mapping) -> tuple[str, ...]:
    if raw["Type"] == "Training":
        return ("TrainingJobName", "ModelArtifacts.S3ModelArtifacts", "OutputDataConfig.S3OutputPath")
    outputs = ((raw.get("Arguments") or {}).get("ProcessingOutputConfig") or {}).get("Outputs") or []
    paths = ["ProcessingJobName"]
    for i, output in enumerate(outputs):
        output_name = output.get("OutputName")
        if not isinstance(output_name, str):
            raise bug(f"step {name}, Arguments.ProcessingOutputConfig.Outputs[{i}]", "OutputName must be a literal string")
        paths.append(output_uri_property(output_name))
    # SageMaker also accepts the output's index; list those after the named forms (error messages show the first ones).
    paths += [output_uri_property(i) for i in range(len(outputs))]
    return tuple(paths)


def check_references(name: str, raw: Mapping, types: Mapping[str, str], properties: Mapping[str, tuple]) -> list[str]:
    """Raise on the first reference that cannot resolve; return the steps this one reads from."""
    upstream = []
    for reference, where in references(raw.get("Arguments") or {}, f"step {name}, Arguments"):
        head, target, path = parse_reference(reference, where)
        if head == "Parameters" and target not in types:
            raise bug(where, f'"{reference}" names no parameter (parameters: {", ".join(sorted(types))})')
        if head == "Execution" and not execution_variable_known(target, raw["Type"]):
            raise bug(where, f'"{reference}" names no execution variable (known: {", ".join(EXECUTION_VARIABLES)})')
        if head == "Steps":
            check_step_reference(name, reference, where, target, path, properties)
            upstream.append(target)
    return upstream


def execution_variable_known(variable: str, step_type: str) -> bool:
    return variable in EXECUTION_VARIABLES or JOB_NAME_VARIABLES.get(variable) == step_type


def check_step_reference(name: str, reference: str, where: str, target: str, path: str, properties: Mapping) -> None:
    if target == name:
        raise bug(where, f'"{reference}" refers to the step itself')
    if target not in properties:
        raise bug(where, f'"{reference}" names no step (steps: {", ".join(properties)})')
    if path not in properties[target]:
        named = [p for p in properties[target] if "Outputs[" not in p or "['" in p]
        raise bug(where, f'"{reference}" is not a property of step {target} (it has: {", ".join(named)})')


def check_string_fields(name: str, raw: Mapping, types: Mapping[str, str]) -> None:
    arguments = raw.get("Arguments") or {}
    for dotted in STRING_FIELDS[raw["Type"]]:
        container = dig(arguments, dotted)
        items = container.items() if isinstance(container, dict) else enumerate(container or [])
        for key, node in items:
            kind = static_type(node, types)
            if kind != "String":
                where = f"step {name}, Arguments.{dotted}" + (f".{key}" if isinstance(container, dict) else f"[{key}]")
                raise bug(where, f"is {kind} {json.dumps(node)} where SageMaker requires a string (convert it with .to_string())")


def dig(node: Mapping, dotted: str) -> object:
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def topological_order(plans: list[StepPlan]) -> list[StepPlan]:
    """Dependencies first; otherwise definition order, so runs are reproducible."""
    done: dict[str, StepPlan] = {}
    pending = list(plans)
    while pending:
        ready = [p for p in pending if all(d in done for d in p.depends_on)]
        if not ready:
            cycle = ", ".join(p.name for p in pending)
            raise bug("definition", f"steps {cycle} depend on each other in a cycle")
        done[ready[0].name] = ready[0]
        pending.remove(ready[0])
    return list(done.values())


def output_uri_property(key: str | int) -> str:
    """The property path of a processing output's URI, by name or position (as the SDK's properties spell it)."""
    ref = f"'{key}'" if isinstance(key, str) else key
    return f"ProcessingOutputConfig.Outputs[{ref}].S3Output.S3Uri"
