"""Load and validate pipeline.yaml.

The schema is data (the `_SCHEMA` tables below), checked against the composed YAML node tree so that every
error can name the file, the line and the YAML path: one line, what is wrong and what is expected, e.g.

    pipeline.yaml:14: similarity.memory_budget_mb: must be an integer between 16 and 786432, got 'lots'

Imports nothing heavy: `validate` and the local runner must not pay for the SageMaker SDK.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.errors import SpecError
from steps.registry import APPROVAL_STATUSES  # one list for the spec, the compiler and Merge

# The runtime parameters of the pipeline, in definition order (their types: compile._parameters).
PARAMETER_NAMES: tuple[str, ...] = (
    "InputData", "OutputPrefix", "InstanceCount", "InstanceType", "TopK", "MinScore", "ModelPackageGroup",
    "ApprovalStatus",
)
NON_FINITE_POLICIES: tuple[str, ...] = ("error", "drop")

# Service limits (CreateProcessingJob / CreateTrainingJob): checked here so a typo fails at validate time.
MAX_PROCESSING_RUNTIME = 5 * 24 * 3600
MAX_TRAINING_RUNTIME = 28 * 24 * 3600
MAX_VOLUME_GB = 16384
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256
MAX_SUBNETS, MAX_SECURITY_GROUPS = 16, 5
MAX_RETRY_ATTEMPTS = 20
# Job names are at most 63 characters and the service appends a unique suffix to `<prefix>-<step>`; its
# length is not documented, so the prefix is kept to 40 characters (leaves 23 for the suffix).
MAX_JOB_BASE_NAME = 40
JOB_STEP_SUFFIXES = ("preprocess", "similarity", "merge", "register")
MAX_JOB_NAME_PREFIX = MAX_JOB_BASE_NAME - 1 - max(map(len, JOB_STEP_SUFFIXES))


# Instance types with local NVMe instance storage: SageMaker encrypts it with a hardware module, and both
# CreateTrainingJob and CreateProcessingJob refuse a VolumeKmsKeyId with them (API reference, ResourceConfig
# and ProcessingClusterConfig, VolumeKmsKeyId: "You can't request a VolumeKmsKeyId when using an instance type
# with local storage"). By EC2 naming, a family whose attributes include "d" has it (ml.m5d, ml.c5d, ml.r5d,
# ml.g4dn, ml.p3dn, ml.p4d, ml.m6id...); these have it without the letter (ResourceConfig.VolumeSizeInGB names
# ml.p4d, ml.g4dn and ml.g5 as the NVMe families).
_INSTANCE_STORE_FAMILIES = frozenset({"g5", "g6", "g6e", "gr6", "p5", "p5e", "p5en", "p6", "trn1", "trn1n", "trn2"})


def has_instance_store(instance_type: str) -> bool:
    match = re.fullmatch(r"ml\.(([a-z]+)\d+([a-z-]*))\.\w+", instance_type)
    if not match:
        return False
    family, _, attributes = match.groups()
    return "d" in attributes or family in _INSTANCE_STORE_FAMILIES


# ---------------------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class InputSettings:
    id_column: str | None
    non_finite: str  # "error" | "drop"


@dataclass(frozen=True)
class ProcessingSettings:
    instance_type: str
    volume_gb: int
    max_runtime_seconds: int


@dataclass(frozen=True)
class PreprocessSettings(ProcessingSettings):
    chunk_rows: int


@dataclass(frozen=True)
class SimilaritySettings:
    volume_gb: int
    max_runtime_seconds: int
    memory_budget_mb: int
    checkpoint_seconds: int = 120  # how much work a spot interruption or a dead host can cost at most
    spot: bool = False  # managed spot training; resumes from the checkpoint prefix after an interruption
    max_wait_seconds: int | None = None  # spot only: runtime plus time spent waiting for capacity


@dataclass(frozen=True)
class SecuritySettings:
    """Reaches every job of the pipeline (network isolation only the jobs that need no network)."""

    volume_kms_key: str | None = None
    output_kms_key: str | None = None
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    network_isolation: bool = True


@dataclass(frozen=True)
class RetrySettings:
    """Retry of a step whose job failed for lack of capacity (SageMaker.CAPACITY_ERROR)."""

    max_attempts: int = 5
    interval_seconds: int = 60


@dataclass(frozen=True)
class CacheSettings:
    """Step caching: see docs/aws.md, "Step caching". Off unless the user vouches inputs never change."""

    immutable_inputs: bool = False
    expire_after: str = "P30D"


@dataclass(frozen=True)
class LocalSettings:
    workdir: Path  # absolute
    parameters: dict[str, Any]  # overrides as written (typed; paths not yet resolved)


@dataclass(frozen=True)
class Spec:
    path: Path  # absolute path of the spec file
    name: str
    region: str
    role_arn: str
    image: str
    job_name_prefix: str
    tags: dict[str, str]  # on the pipeline and on every job it starts
    parameters: dict[str, Any]  # defaults of the 8 runtime parameters, in PARAMETER_NAMES order
    instance_types: tuple[str, ...] | None
    input: InputSettings
    preprocess: PreprocessSettings
    similarity: SimilaritySettings
    merge: ProcessingSettings
    security: SecuritySettings
    retry: RetrySettings
    cache: CacheSettings
    local: LocalSettings
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # YAML path -> line

    @property
    def root(self) -> Path:
        """The folder of the spec file: relative local paths are resolved against it."""
        return self.path.parent

    def local_parameters(self) -> dict[str, Any]:
        """`local.parameters` with local paths made absolute (relative to the spec's folder).

        Values with a URI scheme (s3://, file://) are left alone; non-path parameters are returned as is.
        """
        out = dict(self.local.parameters)
        for name in _PATH_PARAMETERS:
            value = out.get(name)
            if isinstance(value, str) and not _has_scheme(value):
                out[name] = str((self.root / Path(value).expanduser()).resolve())
        return out

    def value_problem(self, *, local: bool) -> Callable[[str, Any], str | None]:
        """The rule for a parameter value given at run or start time: its range, and what this spec adds (an
        InstanceType with instance storage cannot take the spec's volume KMS key)."""
        def problem(name: str, value: Any) -> str | None:
            found = parameter_value_problem(name, value, local=local)
            key = self.security.volume_kms_key
            if not found and name == "InstanceType" and key and isinstance(value, str) and has_instance_store(value):
                found = kms_instance_store_message(key, value)
            return found
        return problem

    def where(self, yaml_path: str) -> str:
        """`file:line` of a YAML path, for errors raised after loading (e.g. by the compiler)."""
        line = self.lines.get(yaml_path)
        return f"{_display(self.path)}:{line}" if line else _display(self.path)


_PATH_PARAMETERS = ("InputData", "OutputPrefix")


def _has_scheme(value: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value) is not None


def _display(path: Path) -> str:
    """The spec's path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# Value checks: each returns the cleaned value or raises _Invalid(expected), phrased to follow "must be".


class _Invalid(Exception):
    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


Check = Callable[[Any], Any]


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML terms."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _integer(lo: int | None = None, hi: int | None = None) -> Check:
    expected = "an integer" + (
        f" between {lo} and {hi}" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
    )

    def check(value: Any) -> int:
        # YAML `true` is a bool, and bool is an int in Python: reject it explicitly.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(expected)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Invalid(expected)
        return value

    return check


def _number(lo: float, hi: float) -> Check:
    expected = f"a number between {lo:g} and {hi:g}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(expected)
        if not lo <= value <= hi:  # also rejects .nan
            raise _Invalid(expected)
        return float(value)  # ParameterFloat refuses an int default

    return check


def _choice(options: tuple[str, ...]) -> Check:
    expected = "one of " + ", ".join(repr(o) for o in options)

    def check(value: Any) -> str:
        if value not in options or not isinstance(value, str):
            close = difflib.get_close_matches(str(value), options, n=1)
            raise _Invalid(expected, f"did you mean {close[0]!r}?" if close else "")
        return value

    return check


def _pattern(regex: str, expected: str, max_len: int | None = None) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise _Invalid(expected)
        if max_len is not None and len(value) > max_len:
            raise _Invalid(expected)
        return value

    return check


def _optional(check: Check) -> Check:
    def wrapped(value: Any) -> Any:
        return None if value is None else check(value)

    return wrapped


def _s3_uri(strip_slash_hint: bool) -> Check:
    expected = "an s3:// URI" + (" with no trailing '/'" if strip_slash_hint else "")
    hint = "local paths go under local.parameters"

    def check(value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?", value):
            raise _Invalid(expected, hint if isinstance(value, str) and "://" not in value else "")
        if strip_slash_hint and value.endswith("/"):
            raise _Invalid(expected)
        return value

    return check


def _location(no_trailing_slash: bool) -> Check:
    """A local run's data location: s3:// or file:// URI, or a path (relative to the spec's folder)."""
    expected = "an s3:// URI, a file:// URI or a path" + (" with no trailing '/'" if no_trailing_slash else "")

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise _Invalid(expected)
        if _has_scheme(value) and not value.startswith(("s3://", "file://")):
            raise _Invalid(expected)
        if no_trailing_slash and value.endswith("/") and value.rstrip("/"):
            raise _Invalid(expected)
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


_KMS_KEY = _pattern(
    r"arn:aws[a-z\-]*:kms:[a-z0-9\-]+:\d{12}:(key|alias)/[\w/\-]+|alias/[\w/\-]+|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}",
    "a KMS key id, key ARN, alias/<name> or alias ARN",
    2048,
)
_ISO_DURATION = _pattern(
    r"P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?",
    "an ISO 8601 duration like 'P30D' or 'PT12H'",
)
_JOB_NAME_PREFIX = _pattern(
    r"[a-zA-Z0-9](-*[a-zA-Z0-9])*",
    f"letters, digits and hyphens, at most {MAX_JOB_NAME_PREFIX} characters (job names are limited to 63 "
    "and SageMaker appends the step and a unique suffix)",
    MAX_JOB_NAME_PREFIX,
)

_INSTANCE_TYPE = _pattern(r"ml\.[a-z0-9]+(\.[a-z0-9]+)+", "a SageMaker instance type like 'ml.m5.xlarge'")
_NON_EMPTY = _pattern(r"\S(.*\S)?", "a non-empty string")

# Parameter defaults for cloud executions, and the local overrides: same types, different location rules.
_PARAMETER_CHECKS: dict[str, Check] = {
    "InputData": _s3_uri(False),
    "OutputPrefix": _s3_uri(True),
    "InstanceCount": _integer(1, 1000),
    "InstanceType": _INSTANCE_TYPE,
    "TopK": _integer(1, 100000),
    "MinScore": _number(-1, 1),
    "ModelPackageGroup": _pattern(
        r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}",
        "a model package group name: letters, digits and hyphens, at most 63 characters",
    ),
    "ApprovalStatus": _choice(APPROVAL_STATUSES),
}
_LOCAL_PARAMETER_CHECKS = {**_PARAMETER_CHECKS, "InputData": _location(False), "OutputPrefix": _location(True)}
# Why a range holds, said when a --param value is refused.
_PARAMETER_PURPOSE = {
    "TopK": "the number of neighbours kept per row",
    "MinScore": "cosine scores lie in [-1, 1]; -1 keeps every pair",
    "InstanceCount": "the number of similarity hosts",
}


def parameter_value_problem(name: str, value: Any, *, local: bool) -> str | None:
    """'<Name> must be <expected>, got <value> (<why>)' when a typed parameter value is out of range, else None.

    The same rules as the spec's defaults; `local` allows plain paths for InputData and OutputPrefix.
    """
    check = (_LOCAL_PARAMETER_CHECKS if local else _PARAMETER_CHECKS).get(name)
    if check is None:
        return None
    try:
        check(value)
        return None
    except _Invalid as exc:
        why = f" ({_PARAMETER_PURPOSE[name]})" if name in _PARAMETER_PURPOSE else ""
        shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else _show(value)
        return f"{name} must be {exc.expected}, got {shown}{why}"


# ---------------------------------------------------------------------------------------------------------
# The schema. A key maps to (check, default); _REQUIRED marks keys without a default. A nested dict is a
# section (a mapping; an absent optional section gets every default).

_REQUIRED = object()


def _section(keys: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"__required__": required, **keys}


_SCHEMA: dict[str, Any] = {
    "name": (
        _pattern(
            r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}",
            "a SageMaker pipeline name: letters, digits and hyphens (no underscores), "
            "starting and ending with a letter or digit, at most 256 characters",
        ),
        _REQUIRED,
    ),
    "region": (_pattern(r"[a-z]{2}(-[a-z]+)+-\d+", "an AWS region like 'us-east-1'"), _REQUIRED),
    "role_arn": (
        _pattern(
            r"arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]+",
            "an IAM role ARN like 'arn:aws:iam::123456789012:role/Name'",
        ),
        _REQUIRED,
    ),
    "image": (_pattern(r"\S+", "a container image URI like '<account>.dkr.ecr.<region>.amazonaws.com/allpairs:tag'"), _REQUIRED),
    "job_name_prefix": (_JOB_NAME_PREFIX, "allpairs"),
    "tags": "tags",  # special-cased: a mapping of tag keys to values
    "parameters": _section(
        {
            "InputData": (_PARAMETER_CHECKS["InputData"], _REQUIRED),
            "OutputPrefix": (_PARAMETER_CHECKS["OutputPrefix"], _REQUIRED),
            "InstanceCount": (_PARAMETER_CHECKS["InstanceCount"], 1),
            "InstanceType": (_PARAMETER_CHECKS["InstanceType"], _REQUIRED),
            "TopK": (_PARAMETER_CHECKS["TopK"], 10),
            "MinScore": (_PARAMETER_CHECKS["MinScore"], -1.0),
            "ModelPackageGroup": (_PARAMETER_CHECKS["ModelPackageGroup"], None),  # None: the pipeline name
            "ApprovalStatus": (_PARAMETER_CHECKS["ApprovalStatus"], "PendingManualApproval"),
        },
        required=True,
    ),
    "instance_types": "list",  # special-cased: optional non-empty list of unique instance types
    "input": _section(
        {
            "id_column": (_optional(_NON_EMPTY), None),
            "non_finite": (_choice(NON_FINITE_POLICIES), "error"),
        }
    ),
    "preprocess": _section(
        {
            "instance_type": (_INSTANCE_TYPE, "ml.m5.xlarge"),
            "volume_gb": (_integer(1, MAX_VOLUME_GB), 30),
            "max_runtime_seconds": (_integer(60, MAX_PROCESSING_RUNTIME), 3600),
            "chunk_rows": (_integer(1), 65536),
        }
    ),
    "similarity": _section(
        {
            "volume_gb": (_integer(1, MAX_VOLUME_GB), 30),
            "max_runtime_seconds": (_integer(60, MAX_TRAINING_RUNTIME), 86400),
            "memory_budget_mb": (_integer(16, 786432), 1024),  # up to the largest instance's 768 GiB
            "checkpoint_seconds": (_integer(0, 86400), 120),
            "spot": (_boolean, False),
            "max_wait_seconds": (_optional(_integer(60, MAX_TRAINING_RUNTIME)), None),
        }
    ),
    "merge": _section(
        {
            "instance_type": (_INSTANCE_TYPE, "ml.m5.xlarge"),
            "volume_gb": (_integer(1, MAX_VOLUME_GB), 30),
            "max_runtime_seconds": (_integer(60, MAX_PROCESSING_RUNTIME), 3600),
        }
    ),
    "security": _section(
        {
            "volume_kms_key": (_optional(_KMS_KEY), None),
            "output_kms_key": (_optional(_KMS_KEY), None),
            "subnets": "ids:subnet",  # special-cased: a list of resource ids
            "security_groups": "ids:sg",
            "network_isolation": (_boolean, True),
        }
    ),
    "retry": _section(
        {
            "max_attempts": (_integer(1, MAX_RETRY_ATTEMPTS), 5),
            "interval_seconds": (_integer(1, 3600), 60),
        }
    ),
    "cache": _section(
        {
            "immutable_inputs": (_boolean, False),
            "expire_after": (_ISO_DURATION, "P30D"),
        }
    ),
    "local": _section(
        {
            "workdir": (_NON_EMPTY, ".allpairs"),
            "parameters": "overrides",  # special-cased: any subset of the runtime parameters
        }
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Walking the node tree


class _Walker:
    def __init__(self, path: Path, loader: yaml.SafeLoader):
        self.file = _display(path)
        self.loader = loader
        self.lines: dict[str, int] = {}

    def fail(self, node: yaml.Node, ypath: str, what: str) -> SpecError:
        where = f"{self.file}:{node.start_mark.line + 1}"
        return SpecError(f"{where}: {ypath}: {what}" if ypath else f"{where}: {what}")

    def scalar(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return {}
        if isinstance(node, yaml.SequenceNode):
            return []
        return self.loader.construct_object(node, deep=True)

    def check(self, node: yaml.Node, ypath: str, check: Check) -> Any:
        value = self.scalar(node)
        try:
            return check(value)
        except _Invalid as bad:
            hint = f"; {bad.hint}" if bad.hint else ""
            raise self.fail(node, ypath, f"must be {bad.expected}, got {_show(value)}{hint}") from None

    def mapping(self, node: yaml.Node, ypath: str, allowed: list[str]) -> dict[str, yaml.Node]:
        """Key -> value node, rejecting non-mappings, non-string keys, duplicates and unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, ypath, f"must be a mapping with keys {', '.join(allowed)}, got {_show(self.scalar(node))}")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            kpath = f"{ypath}.{key}" if ypath else str(key)
            if not isinstance(key, str):
                raise self.fail(key_node, kpath, f"keys must be strings, got {_show(key)}")
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
        present = self.mapping(node, ypath, keys) if node is not None and not _is_null(node) else {}
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
                out[key] = None if child is None or _is_null(child) else self.instance_types(child, kpath)
            elif entry == "overrides":
                out[key] = {} if child is None or _is_null(child) else self.overrides(child, kpath)
            elif entry == "tags":
                out[key] = {} if child is None or _is_null(child) else self.tags(child, kpath)
            elif isinstance(entry, str) and entry.startswith("ids:"):
                out[key] = () if child is None or _is_null(child) else self.ids(child, kpath, entry[4:])
            else:
                check, default = entry
                if child is None:
                    if default is _REQUIRED:
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
            raise self.fail(node, ypath, f"must be {expected}, got {_show(self.scalar(node))}")
        return self.unique_items(node, ypath, _INSTANCE_TYPE, "instance type")

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
            raise self.fail(node, ypath, f"must be a mapping of tag keys to values, got {_show(self.scalar(node))}")
        if len(node.value) > MAX_TAGS:
            raise self.fail(node, ypath, f"{len(node.value)} tags; AWS allows at most {MAX_TAGS}")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key, value = self.scalar(key_node), self.scalar(value_node)
            kpath = f"{ypath}.{key}"
            if not isinstance(key, str) or not _TAG_TEXT.fullmatch(key) or not 1 <= len(key) <= MAX_TAG_KEY:
                raise self.fail(key_node, kpath, f"a tag key must be 1-{MAX_TAG_KEY} letters, digits, spaces or "
                                                 f"_.:/=+-@, got {_show(key)}")
            if key.lower().startswith("aws:"):
                raise self.fail(key_node, kpath, "tag keys starting with 'aws:' are reserved by AWS; rename it")
            if key in out:
                raise self.fail(key_node, kpath, "duplicate tag key")
            if isinstance(value, (bool, dict, list)) or value is None:
                raise self.fail(value_node, kpath, f"a tag value must be text, got {_show(value)}")
            text = str(value)
            if len(text) > MAX_TAG_VALUE or not _TAG_TEXT.fullmatch(text):
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
            raise self.fail(node, ypath, f"must be {expected}, got {_show(self.scalar(node))}")
        check = _pattern(rf"{kind}-[0-9a-f]{{8,17}}", f"an id like '{kind}-0123456789abcdef0'")
        return self.unique_items(node, ypath, check, "id")

    def overrides(self, node: yaml.Node, ypath: str) -> dict[str, Any]:
        present = self.mapping(node, ypath, list(PARAMETER_NAMES))
        # Keep PARAMETER_NAMES order so the result does not depend on how the user ordered the YAML.
        return {
            name: self.check(present[name], f"{ypath}.{name}", _LOCAL_PARAMETER_CHECKS[name])
            for name in PARAMETER_NAMES
            if name in present
        }


_TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*")


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


# ---------------------------------------------------------------------------------------------------------
# Public entry point


def load_spec(path: str | Path) -> Spec:
    """Read and validate a pipeline spec; raise SpecError (one line, with file:line and YAML path)."""
    path = Path(path)
    file = _display(path.absolute())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{file}: no such file; pass the path of your pipeline.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{file}: cannot read the spec: {exc}") from None

    loader = yaml.SafeLoader(text)
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
        if root is None or _is_null(root):
            raise SpecError(f"{file}:1: the spec is empty; expected a mapping with keys {', '.join(_SCHEMA)}")

        walker = _Walker(path.absolute(), loader)
        try:
            raw = walker.section(root, "", _SCHEMA, root)
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            raise SpecError(f"{file}:{mark.line + 1 if mark else '?'}: invalid YAML value: {exc.problem}") from None
        _cross_check(raw, root, walker)
    finally:
        loader.dispose()
    return _build(path, raw, walker.lines)


def _cross_check(raw: dict[str, Any], root: yaml.Node, walker: _Walker) -> None:
    """Rules that involve two keys; errors point at the value that has to change."""
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


def kms_instance_store_message(key: str, instance_type: str) -> str:
    return (f"security.volume_kms_key {key!r} cannot be used with {instance_type}: its instance-store volumes "
            "are encrypted by the instance itself and SageMaker refuses a VolumeKmsKeyId for them; remove "
            "security.volume_kms_key or use an instance type without local storage")


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
        parameters={name: params[name] for name in PARAMETER_NAMES},
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
