"""Two pipeline definitions compared in lines a person reads: parameters, then each step's settings.

    ~ parameter TopK: default 10 -> 20
    ~ Similarity: instance type: Parameters.InstanceType -> ml.c5.4xlarge
    + Merge: tags: team=search

Expressions are shown as written in the definition's terms (`Parameters.TopK`, `Join('/', ...)`), lists of
plain values on one line, so a changed container argument reads as one changed line.
"""
from __future__ import annotations

import json
from typing import Any

# Friendly names for the settings users change most; other fields show their path in the definition.
_LABELS = {
    "ProcessingResources.ClusterConfig.InstanceType": "instance type",
    "ProcessingResources.ClusterConfig.InstanceCount": "instance count",
    "ResourceConfig.InstanceType": "instance type",
    "ResourceConfig.InstanceCount": "instance count",
    "AppSpecification.ImageUri": "image",
    "AlgorithmSpecification.TrainingImage": "image",
    "AppSpecification.ContainerArguments": "arguments",
    "AppSpecification.ContainerEntrypoint": "entrypoint",
    "Tags": "tags",
}
# List items keyed by their name, so that inserting one does not shift the others.
_ITEM_KEYS = ("Name", "InputName", "OutputName", "ChannelName")


def definition_diff(old_text: str, new_text: str) -> list[str]:
    """Lines `~ what: old -> new`, `+ what: new`, `- what: old`; empty when both are the same pipeline."""
    return [line for _, line in _entries(old_text, new_text)]


def changed_summary(old_text: str, new_text: str) -> list[str]:
    """`["2 parameters changed (MinScore, TopK)", "1 step changed (Similarity)"]` for upsert's summary."""
    owners = list(dict.fromkeys(owner for owner, _ in _entries(old_text, new_text)))
    out = []
    for kind in ("parameter", "step"):
        names = [owner.partition(":")[2] for owner in owners if owner.startswith(kind + ":")]
        if names:
            out.append(f"{len(names)} {kind}{'s' if len(names) != 1 else ''} changed ({', '.join(names)})")
    if "pipeline" in owners:
        out.append("pipeline settings changed")
    return out


def _entries(old_text: str, new_text: str) -> list[tuple[str, str]]:
    """(owner, line) pairs; owner is `parameter:<name>`, `step:<name>` or `pipeline`."""
    old, new = json.loads(old_text), json.loads(new_text)
    entries = _parameter_lines(old.get("Parameters") or [], new.get("Parameters") or [])
    old_steps = {s["Name"]: s for s in old.get("Steps") or []}
    new_steps = {s["Name"]: s for s in new.get("Steps") or []}
    for name in [*old_steps, *[n for n in new_steps if n not in old_steps]]:
        if name not in new_steps:
            entries.append((f"step:{name}", f"- step {name}"))
        elif name not in old_steps:
            entries.append((f"step:{name}", f"+ step {name} ({new_steps[name].get('Type')})"))
        else:
            lines = _mapping_lines(name, _step_fields(old_steps[name]), _step_fields(new_steps[name]))
            entries += [(f"step:{name}", line) for line in lines]
    rest_old = {k: v for k, v in old.items() if k not in ("Parameters", "Steps")}
    rest_new = {k: v for k, v in new.items() if k not in ("Parameters", "Steps")}
    entries += [("pipeline", line) for line in _mapping_lines("pipeline", _flatten(rest_old), _flatten(rest_new))]
    return entries


def _parameter_lines(old: list[dict], new: list[dict]) -> list[tuple[str, str]]:
    before, after = {p["Name"]: p for p in old}, {p["Name"]: p for p in new}
    lines = []
    for name in [*before, *[n for n in after if n not in before]]:
        owner = f"parameter:{name}"
        if name not in after:
            lines.append((owner, f"- parameter {name}"))
        elif name not in before:
            p = after[name]
            lines.append((owner, f"+ parameter {name}: {p.get('Type')}, default {_show(p.get('DefaultValue'))}"))
        else:
            for key, label in (("Type", "type"), ("DefaultValue", "default"), ("EnumValues", "allowed values")):
                a, b = before[name].get(key), after[name].get(key)
                if a != b:
                    lines.append((owner, f"~ parameter {name}: {label} {_show(a)} -> {_show(b)}"))
    return lines


def _step_fields(step: dict) -> dict[str, str]:
    fields = _flatten(step.get("Arguments") or {})
    fields.update(_flatten({k: v for k, v in step.items() if k not in ("Name", "Arguments")}))
    return fields


def _mapping_lines(owner: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for path in [*old, *[p for p in new if p not in old]]:
        label = _LABELS.get(path, path)
        if path not in new:
            lines.append(f"- {owner}: {label}: {old[path]}")
        elif path not in old:
            lines.append(f"+ {owner}: {label}: {new[path]}")
        elif old[path] != new[path]:
            lines.append(f"~ {owner}: {label}: {old[path]} -> {new[path]}")
    return lines


def _flatten(node: Any, path: str = "") -> dict[str, str]:
    """Leaf path -> shown value. Expressions and lists of plain values are leaves."""
    if isinstance(node, dict) and not _is_expression(node):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{path}.{key}" if path else key))
        return out
    if isinstance(node, list) and any(isinstance(v, dict) and not _is_expression(v) for v in node):
        if path == "Tags":  # a tag list reads best as key=value pairs
            return {path: ", ".join(f"{t.get('Key')}={t.get('Value')}" for t in node)}
        out = {}
        for i, item in enumerate(node):
            key = next((item[k] for k in _ITEM_KEYS if isinstance(item, dict) and isinstance(item.get(k), str)), i)
            out.update(_flatten(item, f"{path}[{key}]"))
        return out
    return {path: _show(node)}


def _is_expression(node: dict) -> bool:
    return set(node) <= {"Get", "Std:Join", "Std:JsonGet"} and len(node) == 1


def _show(value: Any) -> str:
    if isinstance(value, dict) and "Get" in value and len(value) == 1:
        return str(value["Get"])
    if isinstance(value, dict) and "Std:Join" in value:
        join = value["Std:Join"]
        parts = ", ".join(_show(v) for v in join.get("Values", []))
        return f"Join({join.get('On', '')!r}, [{parts}])"
    if isinstance(value, list):
        return " ".join(_show(v) for v in value) if value else "[]"
    if isinstance(value, str):
        return value if value else "''"
    return json.dumps(value)
