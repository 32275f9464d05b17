"""Load and validate pipeline.yaml.

The schema is data (the `SCHEMA` table below, and the runtime parameters' table in parameters.py), checked
against the composed YAML node tree so that every error can name the file, the line and the YAML path: one
line, what is wrong and what is expected, e.g.

    pipeline.yaml:14: similarity.memory_budget_mb: must be an integer between 16 and 786432, got 'lots'

Imports nothing heavy: `validate` and the local runner must not pay for the SageMaker SDK.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import SpecError
from steps.contract import (DEFAULT_CHECKPOINT_SECONDS, DEFAULT_CHUNK_ROWS, DEFAULT_PREPROCESS_BUDGET_MB,
                            DEFAULT_QUERY_FILES, MODES, NON_FINITE_POLICIES, QUERIES_MODE, SELF_RULES)

from .checks import (ISO_DURATION, INSTANCE_TYPE, JOB_NAME_PREFIX, KMS_KEY, MAX_PROCESSING_RUNTIME, MAX_RETRY_ATTEMPTS,
                     MAX_SECURITY_GROUPS, MAX_SUBNETS, MAX_TAG_KEY, MAX_TAG_VALUE, MAX_TAGS, MAX_TRAINING_RUNTIME,
                     MAX_VOLUME_GB, NON_EMPTY, DELIMITER, Check, Invalid, boolean, choice, has_instance_store, integer,
                     kms_instance_store_message, optional, pattern, show)
from .model import (CacheSettings, InputSettings, LocalSettings, PreprocessSettings, ProcessingSettings, QuerySettings,
                    RetrySettings, SecuritySettings, SimilaritySettings, Spec, display)
from .parameters import PARAMETER_NAMES, PARAMETERS, REQUIRED, parameters_of
from .yaml12 import LocatedProblem, SpecLoader



def _section(keys: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"__required__": required, **keys}


SCHEMA: dict[str, Any] = {
    "name": (
        pattern(
            r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}",
            "a SageMaker pipeline name: letters, digits and hyphens (no underscores), "
            "starting and ending with a letter or digit, at most 256 characters",
        ),
        REQUIRED,
    ),
    "region": (pattern(r"[a-z]{2}(-[a-z]+)+-\d+", "an AWS region like 'us-east-1'"), REQUIRED),
    "role_arn": (
        pattern(
            r"arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]+",
            "an IAM role ARN like 'arn:aws:iam::123456789012:role/Name'",
        ),
        REQUIRED,
    ),
    "image": (pattern(r"\S+", "a container image URI like '<account>.dkr.ecr.<region>.amazonaws.com/allpairs:tag'"), REQUIRED),
    "job_name_prefix": (JOB_NAME_PREFIX, "allpairs"),
    "tags": "tags",  # special-cased: a mapping of tag keys to values
    # all_pairs: every row against every row. queries: each row of QueryData against InputData (the corpus).
    "mode": (choice(MODES), MODES[0]),
    "parameters": _section({p.name: (p.cloud, p.default) for p in PARAMETERS}, required=True),
    "instance_types": "list",  # special-cased: optional non-empty list of unique instance types
    "input": _section(
        {
            "id_column": (optional(NON_EMPTY), None),
            "non_finite": (choice(NON_FINITE_POLICIES), NON_FINITE_POLICIES[0]),
            "vector_column": (optional(NON_EMPTY), None),
            "delimiter": (optional(DELIMITER), None),
        }
    ),
    "queries": _section(  # queries mode only
        {
            "id_column": (optional(NON_EMPTY), None),
            "chunk_files": (integer(1, 100000), DEFAULT_QUERY_FILES),
            "self_rule": (choice(SELF_RULES), SELF_RULES[0]),
        }
    ),
    "preprocess": _section(
        {
            "instance_type": (INSTANCE_TYPE, "ml.m5.xlarge"),
            "volume_gb": (integer(1, MAX_VOLUME_GB), 30),
            "max_runtime_seconds": (integer(60, MAX_PROCESSING_RUNTIME), 3600),
            "chunk_rows": (integer(1), DEFAULT_CHUNK_ROWS),
            "memory_budget_mb": (integer(16, 786432), DEFAULT_PREPROCESS_BUDGET_MB),
        }
    ),
    "similarity": _section(
        {
            "volume_gb": (integer(1, MAX_VOLUME_GB), 30),
            "max_runtime_seconds": (integer(60, MAX_TRAINING_RUNTIME), 86400),
            "memory_budget_mb": (integer(16, 786432), 1024),  # up to the largest instance's 768 GiB
            "checkpoint_seconds": (integer(0, 86400), DEFAULT_CHECKPOINT_SECONDS),
            "spot": (boolean, False),
            "max_wait_seconds": (optional(integer(60, MAX_TRAINING_RUNTIME)), None),
        }
    ),
    "merge": _section(
        {
            "instance_type": (INSTANCE_TYPE, "ml.m5.xlarge"),
            "volume_gb": (integer(1, MAX_VOLUME_GB), 30),
            "max_runtime_seconds": (integer(60, MAX_PROCESSING_RUNTIME), 3600),
        }
    ),
    "security": _section(
        {
            "volume_kms_key": (optional(KMS_KEY), None),
            "output_kms_key": (optional(KMS_KEY), None),
            "subnets": "ids:subnet",  # special-cased: a list of resource ids
            "security_groups": "ids:sg",
            "network_isolation": (boolean, True),
            "encrypt_inter_container_traffic": (boolean, False),
        }
    ),
    "retry": _section(
        {
            "max_attempts": (integer(1, MAX_RETRY_ATTEMPTS), 5),
            "interval_seconds": (integer(1, 3600), 60),
        }
    ),
    "cache": _section(
        {
            "immutable_inputs": (boolean, False),
            "expire_after": (ISO_DURATION, "P30D"),
        }
    ),
    "local": _section(
        {
            "workdir": (NON_EMPTY, ".allpairs"),
            "parameters": "overrides",  # special-cased: any subset of the runtime parameters
        }
    ),
}


BY_NAME_LOCAL = {p.name: p.local for p in PARAMETERS}


class _Walker:
    def __init__(self, path: Path, loader: SpecLoader):
        self.file = display(path)
        self.loader = loader
        self.lines: dict[str, int] = {}

    def fail(self, node: yaml.Node, ypath: str, what: str) -> SpecError:
        where = f"{self.file}:{node.start_mark.line + 1}"
        return SpecError(f"{where}: {ypath}: {what}" if ypath else f"{where}: {what}")

    def scalar(self, node: yaml.Node, ypath: str = "") -> Any:
        if isinstance(node, yaml.MappingNode):
            return {}
        if isinstance(node, yaml.SequenceNode):
            return []
        try:
            return self.loader.construct_object(node, deep=True)
        except LocatedProblem as problem:  # YAML 1.1 would read it otherwise, or a number too long (yaml12.py)
            raise self.fail(node, ypath, problem.problem) from None

    def check(self, node: yaml.Node, ypath: str, check: Check) -> Any:
        value = self.scalar(node, ypath)
        try:
            return check(value)
        except Invalid as bad:
            hint = f"; {bad.hint}" if bad.hint else ""
            raise self.fail(node, ypath, f"must be {bad.expected}, got {show(value)}{hint}") from None

    def mapping(self, node: yaml.Node, ypath: str, allowed: list[str]) -> dict[str, yaml.Node]:
        """Key -> value node, rejecting non-mappings, non-string keys, duplicates and unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, ypath, f"must be a mapping with keys {', '.join(allowed)}, got {show(self.scalar(node))}")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, ypath)
            kpath = f"{ypath}.{key}" if ypath else str(key)
            if not isinstance(key, str):
                raise self.fail(key_node, kpath, f"keys must be strings, got {show(key)}")
            if key in out:
                first = out[key].start_mark.line + 1
                raise self.fail(key_node, kpath, f"duplicate key (first set on line {first})")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                fix = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
                raise self.fail(key_node, kpath, f"unknown key; {fix}")
            out[key] = value_node
            self.lines[kpath] = value_node.start_mark.line + 1
        return out

    def section(self, node: yaml.Node | None, ypath: str, schema: dict[str, Any], parent: yaml.Node) -> dict[str, Any]:
        keys = [k for k in schema if not k.startswith("__")]
        present = self.mapping(node, ypath, keys) if node is not None and not is_null(node) else {}
        out: dict[str, Any] = {}
        for key in keys:
            entry = schema[key]
            kpath = f"{ypath}.{key}" if ypath else key
            child = present.get(key)
            if isinstance(entry, dict):
                if child is None and entry["__required__"]:
                    raise self.missing(parent if node is None else node, kpath)
                out[key] = self.section(child, kpath, entry, node if node is not None else parent)
            elif entry == "list":
                out[key] = None if child is None or is_null(child) else self.instance_types(child, kpath)
            elif entry == "overrides":
                out[key] = {} if child is None or is_null(child) else self.overrides(child, kpath)
            elif entry == "tags":
                out[key] = {} if child is None or is_null(child) else self.tags(child, kpath)
            elif isinstance(entry, str) and entry.startswith("ids:"):
                out[key] = () if child is None or is_null(child) else self.ids(child, kpath, entry[4:])
            else:
                check, default = entry
                if child is None:
                    if default is REQUIRED:
                        raise self.missing(parent if node is None else node, kpath)
                    out[key] = default
                else:
                    out[key] = self.check(child, kpath, check)
        return out

    def missing(self, node: yaml.Node, kpath: str) -> SpecError:
        key = kpath.rsplit(".", 1)[-1]
        return self.fail(node, kpath, f"required key {key!r} is missing")

    def instance_types(self, node: yaml.Node, ypath: str) -> tuple[str, ...]:
        expected = "a non-empty list of SageMaker instance types"
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, ypath, f"must be {expected}, got {show(self.scalar(node))}")
        return self.unique_items(node, ypath, INSTANCE_TYPE, "instance type")

    def unique_items(self, node: yaml.SequenceNode, ypath: str, check: Check, what: str) -> tuple[str, ...]:
        """Each item passes `check`; a repeated one is an error at its own line."""
        seen: list[str] = []
        for i, item in enumerate(node.value):
            value = self.check(item, f"{ypath}[{i}]", check)
            if value in seen:
                raise self.fail(item, f"{ypath}[{i}]", f"duplicate {what} {value!r}")
            seen.append(value)
        return tuple(seen)

    def tags(self, node: yaml.Node, ypath: str) -> dict[str, str]:
        """AWS tags: at most 50, keys 1-128 characters not starting with 'aws:', values up to 256."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, ypath, f"must be a mapping of tag keys to values, got {show(self.scalar(node))}")
        if len(node.value) > MAX_TAGS:
            raise self.fail(node, ypath, f"{len(node.value)} tags; AWS allows at most {MAX_TAGS}")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, ypath)
            kpath = f"{ypath}.{key}"
            value = self.scalar(value_node, kpath)
            if not isinstance(key, str) or not TAG_TEXT.fullmatch(key) or not 1 <= len(key) <= MAX_TAG_KEY:
                raise self.fail(key_node, kpath, f"a tag key must be 1-{MAX_TAG_KEY} letters, digits, spaces or "
                                                 f"_.:/=+-@, got {show(key)}")
            if key.lower().startswith("aws:"):
                raise self.fail(key_node, kpath, "tag keys starting with 'aws:' are reserved by AWS; rename it")
            if key in out:
                raise self.fail(key_node, kpath, "duplicate tag key")
            if isinstance(value, (bool, dict, list)) or value is None:
                raise self.fail(value_node, kpath, f"a tag value must be text, got {show(value)}")
            text = str(value)
            if len(text) > MAX_TAG_VALUE or not TAG_TEXT.fullmatch(text):
                raise self.fail(value_node, kpath, f"a tag value must be at most {MAX_TAG_VALUE} letters, digits, "
                                                   "spaces or _.:/=+-@")
            out[key] = text
            self.lines[kpath] = value_node.start_mark.line + 1
        return out

    def ids(self, node: yaml.Node, ypath: str, kind: str) -> tuple[str, ...]:
        """VPC resource ids: `subnet-...` or `sg-...`, unique, within the API's list limit."""
        limit = {"subnet": MAX_SUBNETS, "sg": MAX_SECURITY_GROUPS}[kind]
        expected = f"a list of at most {limit} ids like '{kind}-0123456789abcdef0'"
        if not isinstance(node, yaml.SequenceNode) or len(node.value) > limit:
            raise self.fail(node, ypath, f"must be {expected}, got {show(self.scalar(node))}")
        check = pattern(rf"{kind}-[0-9a-f]{{8,17}}", f"an id like '{kind}-0123456789abcdef0'")
        return self.unique_items(node, ypath, check, "id")

    def overrides(self, node: yaml.Node, ypath: str) -> dict[str, Any]:
        present = self.mapping(node, ypath, list(PARAMETER_NAMES))
        # Keep PARAMETER_NAMES order so the result does not depend on how the user ordered the YAML.
        return {
            name: self.check(present[name], f"{ypath}.{name}", BY_NAME_LOCAL[name])
            for name in PARAMETER_NAMES
            if name in present
        }


TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*")


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def load_spec(path: str | Path) -> Spec:
    """Read and validate a pipeline spec; raise SpecError (one line, with file:line and YAML path)."""
    path = Path(path)
    file = display(path.absolute())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{file}: no such file; pass the path of your pipeline.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{file}: cannot read the spec: {exc}") from None

    loader = SpecLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark else ""
            col = f" (column {mark.column + 1})" if mark else ""
            raise SpecError(f"{file}{line}: invalid YAML: {exc.problem or exc.context}{col}") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"{file}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if root is None or is_null(root):
            raise SpecError(f"{file}:1: the spec is empty; expected a mapping with keys {', '.join(SCHEMA)}")

        walker = _Walker(path.absolute(), loader)
        try:
            raw = walker.section(root, "", SCHEMA, root)
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            raise SpecError(f"{file}:{mark.line + 1 if mark else '?'}: invalid YAML value: {exc.problem}") from None
        _cross_check(raw, root, walker)
    finally:
        loader.dispose()
    return _build(path, raw, walker.lines)


def _cross_check(raw: dict[str, Any], root: yaml.Node, walker: _Walker) -> None:
    """Rules that involve two keys; errors point at the value that has to change."""
    _check_mode(raw, walker)
    _check_spot(raw, walker)
    _check_vpc(raw, walker)
    _check_kms_instance_store(raw, walker)
    allowed = raw["instance_types"]
    if allowed is None:
        return
    for ypath, value in (
        ("parameters.InstanceType", raw["parameters"]["InstanceType"]),
        ("local.parameters.InstanceType", raw["local"]["parameters"].get("InstanceType")),
    ):
        if value is not None and value not in allowed:
            line = walker.lines.get(ypath, 1)
            options = ", ".join(repr(t) for t in allowed)
            raise SpecError(
                f"{walker.file}:{line}: {ypath}: must be one of instance_types ({options}), got {value!r}; "
                "add it to instance_types or pick a listed one"
            )


def _check_mode(raw: dict[str, Any], walker: _Walker) -> None:
    """A parameter of the other mode's definition is refused (it would do nothing); one this mode needs, required."""
    mode = raw["mode"]
    line = lambda ypath: walker.lines.get(ypath, walker.lines.get("mode", 1))  # noqa: E731
    for p in PARAMETERS:
        for ypath, value in ((f"parameters.{p.name}", raw["parameters"][p.name]),
                             (f"local.parameters.{p.name}", raw["local"]["parameters"].get(p.name))):
            if mode not in p.modes and value is not None:
                raise SpecError(f"{walker.file}:{line(ypath)}: {ypath}: a parameter of mode: {', '.join(p.modes)} "
                                f"only, and this spec's mode is {mode}; remove it, or set mode: {p.modes[0]}")
        if p.modes != MODES and mode in p.modes and raw["parameters"][p.name] is None:  # a mode's own: required
            raise SpecError(f"{walker.file}:{line('parameters')}: parameters.{p.name}: required in mode: {mode} "
                            f"({p.help}); add it to parameters")
    touched = [key for key in walker.lines if key.startswith("queries.")]
    if mode != QUERIES_MODE and touched:
        raise SpecError(f"{walker.file}:{walker.lines[touched[0]]}: {touched[0]}: the queries section is for mode: "
                        f"{QUERIES_MODE} only, and this spec's mode is {mode}; remove it, or set mode: {QUERIES_MODE}")


def _check_spot(raw: dict[str, Any], walker: _Walker) -> None:
    sim = raw["similarity"]
    line = lambda key: walker.lines.get(f"similarity.{key}", walker.lines.get("similarity", 1))  # noqa: E731
    if not sim["spot"]:
        if sim["max_wait_seconds"] is not None:
            raise SpecError(f"{walker.file}:{line('max_wait_seconds')}: similarity.max_wait_seconds: applies to "
                            "spot training only; set similarity.spot: true or remove it")
        return
    wait, runtime = sim["max_wait_seconds"], sim["max_runtime_seconds"]
    if wait is None:
        raise SpecError(f"{walker.file}:{line('spot')}: similarity.spot: spot training needs "
                        f"similarity.max_wait_seconds (>= max_runtime_seconds {runtime}: run time plus time "
                        "waiting for spot capacity); add it")
    if wait < runtime:
        raise SpecError(f"{walker.file}:{line('max_wait_seconds')}: similarity.max_wait_seconds: must be >= "
                        f"similarity.max_runtime_seconds ({runtime}), got {wait}; SageMaker rejects a spot job "
                        "that may wait less than it may run")


def _check_kms_instance_store(raw: dict[str, Any], walker: _Walker) -> None:
    key = raw["security"]["volume_kms_key"]
    if not key:
        return
    used = [("preprocess.instance_type", raw["preprocess"]["instance_type"]),
            ("merge.instance_type", raw["merge"]["instance_type"]),
            ("parameters.InstanceType", raw["parameters"]["InstanceType"]),
            ("local.parameters.InstanceType", raw["local"]["parameters"].get("InstanceType"))]
    used += [(f"instance_types[{i}]", t) for i, t in enumerate(raw["instance_types"] or [])]
    for ypath, instance_type in used:
        if instance_type and has_instance_store(instance_type):
            line = walker.lines.get("security.volume_kms_key", 1)
            raise SpecError(f"{walker.file}:{line}: {kms_instance_store_message(key, instance_type)} ({ypath})")


def _check_vpc(raw: dict[str, Any], walker: _Walker) -> None:
    sec = raw["security"]
    if bool(sec["subnets"]) != bool(sec["security_groups"]):
        have, missing = ("subnets", "security_groups") if sec["subnets"] else ("security_groups", "subnets")
        line = walker.lines.get(f"security.{have}", 1)
        raise SpecError(f"{walker.file}:{line}: security.{have}: a VPC needs both subnets and security_groups; "
                        f"add security.{missing}")


def _build(path: Path, raw: dict[str, Any], lines: dict[str, int]) -> Spec:
    path = path.resolve()
    params = dict(raw["parameters"])
    if params["ModelPackageGroup"] is None:
        params["ModelPackageGroup"] = raw["name"][:63]
    return Spec(
        path=path,
        name=raw["name"],
        region=raw["region"],
        role_arn=raw["role_arn"],
        image=raw["image"],
        job_name_prefix=raw["job_name_prefix"],
        tags=raw["tags"],
        parameters={p.name: params[p.name] for p in parameters_of(raw["mode"])},
        mode=raw["mode"],
        queries=QuerySettings(**raw["queries"]),
        instance_types=raw["instance_types"],
        input=InputSettings(**raw["input"]),
        preprocess=PreprocessSettings(**raw["preprocess"]),
        similarity=SimilaritySettings(**raw["similarity"]),
        merge=ProcessingSettings(**raw["merge"]),
        security=SecuritySettings(**raw["security"]),
        retry=RetrySettings(**raw["retry"]),
        cache=CacheSettings(**raw["cache"]),
        local=LocalSettings(
            workdir=(path.parent / Path(raw["local"]["workdir"]).expanduser()).resolve(),
            parameters=raw["local"]["parameters"],
        ),
        lines=lines,
    )

