"""Pipeline parameter values for a local run: definition defaults < spec local overrides < --param."""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from pipeline.errors import UsageError


@dataclass(frozen=True)
class ParameterOverride:
    name: str
    value: object
    origin: str  # where the value came from, the start of any error about it: "--param TopK=ten"


def parse_param_args(args: Sequence[str]) -> list[ParameterOverride]:
    """`--param Name=value` strings -> overrides (the value stays text: it is typed against the definition)."""
    overrides = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep or not name.strip():
            example = f"{name.strip() or 'Name'}={value or 'value'}"
            raise UsageError(f"--param {arg}: expected Name=value, for example --param {example}")
        overrides.append(ParameterOverride(name.strip(), value, f"--param {abbreviated(arg)}"))
    return overrides


def abbreviated(text: str, limit: int = 500) -> str:
    """A value as messages show it: whole when short, else its start and its length (one readable line)."""
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"


def declared_parameters(definition: Mapping) -> dict[str, dict]:
    return {p["Name"]: p for p in definition.get("Parameters") or []}


def parameter_types(definition: Mapping) -> dict[str, str]:
    return {name: p.get("Type", "String") for name, p in declared_parameters(definition).items()}


def resolve_parameters(definition: Mapping, overrides: Iterable[ParameterOverride] = ()) -> dict[str, object]:
    """Every declared parameter's value, typed as the definition declares it; later overrides win."""
    declared = declared_parameters(definition)
    values = {name: p.get("DefaultValue") for name, p in declared.items()}
    for override in overrides:
        if override.name not in declared:
            raise UsageError(unknown_parameter_message(override, declared))
        values[override.name] = typed_value(declared[override.name], override)
    for name, value in values.items():
        if value is None:
            kind = declared[name].get("Type", "String")
            raise UsageError(f"parameter {name} has no default value: pass --param {name}=<{kind}>")
    return values


ValueProblem = Callable[[str, object], "str | None"]


def checked_values(definition: Mapping, overrides: Sequence[ParameterOverride], problem: ValueProblem) -> dict:
    """Every parameter's value, the `overrides` typed by the definition and checked by the product's `problem`
    (pipeline/spec: the parameter table): what a command line gives is checked once, where it enters."""
    values = resolve_parameters(definition, overrides)
    given = {o.name: o.origin for o in overrides}
    check_parameter_values({name: values[name] for name in given}, given, problem)
    return values


def check_parameter_values(values: Mapping[str, object], origins: Mapping[str, str], problem: ValueProblem) -> None:
    """Refuse out-of-range values before any step runs; the message starts where the value came from."""
    for name, value in values.items():
        found = problem(name, value)
        if found:
            origin = origins.get(name, f"the definition's default for {name}")
            fits = "within that range" if isinstance(value, (int, float)) else "of that form"
            raise UsageError(f"{origin}: {found}; pass --param {name}=<value> {fits}")


def unknown_parameter_message(override: ParameterOverride, declared: Mapping[str, dict]) -> str:
    names = sorted(declared)
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(override.name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f' (did you mean "{by_lower[close[0]]}"?)' if close else ""
    return f'{override.origin}: unknown parameter "{override.name}"{hint}; parameters: {", ".join(names)}'


def typed_value(declared: Mapping, override: ParameterOverride) -> object:
    kind = declared.get("Type", "String")
    parse = _PARSERS.get(kind)
    if parse is None:
        raise UsageError(f"{override.origin}: parameter {override.name} has type {kind}, which the local runner does not know")
    value = parse(override.value)
    if value is None and kind == "Integer" and isinstance(override.value, str) \
            and re.fullmatch(r"\s*[+-]?\d+\s*", override.value):
        raise UsageError(f"{override.origin}: an integer of {len(override.value.strip().lstrip('+-'))} digits; "
                         f"{override.name} takes at most {MAX_DIGITS}")
    if value is None:
        example = declared.get("DefaultValue", _EXAMPLES[kind])
        raise UsageError(
            f"{override.origin}: {override.name} is {_ARTICLE[kind]} {kind} parameter and {_show(override.value)} "
            f"is not {_WHAT[kind]} (for example {override.name}={_show_plain(example)})"
        )
    allowed = declared.get("EnumValues")
    if allowed and value not in allowed:
        raise UsageError(
            f"{override.origin}: {_show(value)} is not an allowed value of {override.name}; allowed: {', '.join(map(str, allowed))}"
        )
    return value


MAX_DIGITS = 20  # beyond any Integer parameter (int64 has 19 digits); Python refuses to convert over 4300


def _parse_integer(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(rf"\s*[+-]?\d{{1,{MAX_DIGITS}}}\s*", raw):
        return int(raw)
    return None


def _parse_float(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw) if isinstance(raw, (int, float, str)) else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _parse_boolean(raw: object) -> bool | None:
    if isinstance(raw, bool):
        return raw
    return {"true": True, "false": False}.get(str(raw).strip().lower()) if isinstance(raw, str) else None


def _parse_string(raw: object) -> str | None:
    if isinstance(raw, bool):
        return None
    return str(raw) if isinstance(raw, (str, int, float)) else None


_PARSERS = {"Integer": _parse_integer, "Float": _parse_float, "Boolean": _parse_boolean, "String": _parse_string}
_WHAT = {"Integer": "an integer", "Float": "a finite number", "Boolean": "true or false", "String": "a string"}
_ARTICLE = {"Integer": "an", "Float": "a", "Boolean": "a", "String": "a"}
_EXAMPLES = {"Integer": 10, "Float": 0.5, "Boolean": "true", "String": "text"}


def _show(value: object) -> str:
    return f'"{abbreviated(value)}"' if isinstance(value, str) else repr(value)


def _show_plain(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
