"""A YAML loader for pipeline.yaml without YAML 1.1's surprises.

PyYAML implements YAML 1.1, where `TopK: 010` is the octal number 8, `1:30` is the base-60 number 90, `yes`,
`no`, `on` and `off` are booleans, `1_000` is 1000 and a bare `2026-01-01` is a date; YAML 1.2 (what editors,
linters and most other tools now assume) reads them as 10 and as text. A plain scalar whose two readings
differ is refused with both readings, at its line and YAML path (the walker in schema.py locates it), so a
value never silently means what its author did not write; the others resolve by YAML 1.2's core schema.

Also refused with a location: nesting deeper than MAX_DEPTH (PyYAML composes recursively: a deep enough
document would end in RecursionError) and integers longer than MAX_DIGITS digits (Python refuses to convert
more than 4300, and no setting takes more than 20).
"""
from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

MAX_DEPTH = 32  # the spec itself is 3 levels deep
MAX_DIGITS = 20  # beyond any integer setting (int64 has 19 digits)

STR, INT, FLOAT, BOOL, NULL = (f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null"))
AMBIGUOUS = "tag:allpairs,2026:ambiguous"  # a plain scalar YAML 1.1 and YAML 1.2 read differently
TOO_LONG = "tag:allpairs,2026:too-long"

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), in resolution order.
CORE = (
    (NULL, re.compile(r"~|null|Null|NULL|")),
    (BOOL, re.compile(r"true|True|TRUE|false|False|FALSE")),
    (INT, re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")),
    (FLOAT, re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")),
)
COMPARED_1_1 = (STR, INT, FLOAT, BOOL, NULL, "tag:yaml.org,2002:timestamp")  # not 1.1's merge key << or value =


class LocatedProblem(ConstructorError):
    """A scalar refused where it stands: the walker adds the YAML path (schema._Walker.scalar)."""

    def __init__(self, node: yaml.Node, problem: str):
        super().__init__(None, None, problem, node.start_mark)


def core_value(tag: str, text: str) -> Any:
    """The value YAML 1.2's core schema gives `text` resolved as `tag`."""
    if tag == NULL:
        return None
    if tag == BOOL:
        return text.lower() == "true"
    if tag == INT:
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)
    if tag == FLOAT:
        lowered = text.lower()
        if lowered.endswith(".inf"):
            return float("-inf") if lowered.startswith("-") else float("inf")
        return float("nan") if lowered == ".nan" else float(text)
    return text


def core_tag(text: str) -> str:
    return next((tag for tag, pattern in CORE if pattern.fullmatch(text)), STR)


def reading_1_1(loader: yaml.SafeLoader, text: str) -> tuple[str, Any] | None:
    """(tag, value) as YAML 1.1 reads the plain scalar `text`: PyYAML's SafeLoader, plus the y/n booleans of the
    1.1 type repository that PyYAML leaves out; None for the 1.1 tags no value of a spec takes (<<, =)."""
    if text in ("y", "Y", "n", "N"):
        return BOOL, text in ("y", "Y")
    tag = _RESOLVER_1_1.resolve(ScalarNode, text, (True, False))
    if tag not in COMPARED_1_1:
        return None
    constructor = SafeConstructor.yaml_constructors[tag]
    return tag, constructor(loader, ScalarNode(tag, text))


_RESOLVER_1_1 = Resolver()  # PyYAML's own YAML 1.1 resolution table (the class attribute SpecLoader replaces)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal readings (NaN equals NaN here: `.nan` means NaN to both)."""
    (tag_a, value_a), (tag_b, value_b) = a, b
    if tag_a == tag_b == FLOAT and value_a != value_a and value_b != value_b:
        return True
    return tag_a == tag_b and type(value_a) is type(value_b) and value_a == value_b


def describe(value: Any) -> str:
    """A reading as it is written in YAML: text quoted, the rest as YAML 1.1 and 1.2 both read it."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def unambiguous(value: Any) -> bool:
    """Whether describe(value) reads the same in YAML 1.1 and 1.2 (a date written plain does not)."""
    return isinstance(value, (str, bool, int, float)) or value is None


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "the boolean"
    if isinstance(value, (int, float)):
        return "the number"
    if isinstance(value, str):
        return "the text"
    return f"the {type(value).__name__}"  # date, datetime


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core resolution, refusing what YAML 1.1 reads otherwise, depth-bounded."""

    yaml_implicit_resolvers: dict = {}  # none of 1.1's: `resolve` below decides every plain scalar

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def resolve(self, kind_, value, implicit):
        if kind_ is not ScalarNode or not implicit[0]:
            return super().resolve(kind_, value, implicit)  # quoted or explicitly tagged: as written
        tag = core_tag(value)
        if tag == INT and len(value.lstrip("+-")) > MAX_DIGITS:
            return TOO_LONG
        try:
            old = reading_1_1(self, value)
            if old is not None and not same(old, (tag, core_value(tag, value))):
                return AMBIGUOUS
        except ValueError:  # a 1.1 number too long to convert: refused with the 1.2 reading below
            return TOO_LONG
        return tag

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep (the spec "
                                                              "is 3 levels deep); flatten it", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_ambiguous(self, node: ScalarNode):
        text = node.value
        tag = core_tag(text)
        old, new = reading_1_1(self, text)[1], core_value(tag, text)
        fix = f"{describe(new)} or {describe(old)}, whichever you mean" if unambiguous(old) else describe(new)
        raise LocatedProblem(node, f"{text} is ambiguous: YAML 1.1 reads it as {kind(old)} {describe(old)}, YAML 1.2 "
                                   f"as {kind(new)} {describe(new)}; write {fix}")

    def construct_too_long(self, node: ScalarNode):
        digits = len(node.value.lstrip("+-").replace("_", ""))
        raise LocatedProblem(node, f"an integer of {digits} digits, more than any setting takes (at most "
                                   f"{MAX_DIGITS}); write the value meant")

    def construct_core(self, node: ScalarNode):
        return core_value(node.tag, node.value)


for _tag in (NULL, BOOL, INT, FLOAT):
    SpecLoader.add_constructor(_tag, SpecLoader.construct_core)
SpecLoader.add_constructor(AMBIGUOUS, SpecLoader.construct_ambiguous)
SpecLoader.add_constructor(TOO_LONG, SpecLoader.construct_too_long)
