"""Value checks for pipeline.yaml and for parameter values: each returns the cleaned value or raises Invalid(expected),
phrased to follow "must be". Also the service limits and instance-type facts they rest on."""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable

# Service limits (CreateProcessingJob / CreateTrainingJob): checked here so a typo fails at validate time.
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


class Invalid(Exception):
    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


Check = Callable[[Any], Any]


def show(value: Any) -> str:
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


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    expected = "an integer" + (
        f" between {lo} and {hi}" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
    )

    def check(value: Any) -> int:
        # YAML `true` is a bool, and bool is an int in Python: reject it explicitly.
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(expected)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(expected)
        return value

    return check


def number(lo: float, hi: float) -> Check:
    expected = f"a number between {lo:g} and {hi:g}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(expected)
        if not lo <= value <= hi:  # also rejects .nan
            raise Invalid(expected)
        return float(value)  # ParameterFloat refuses an int default

    return check


def choice(options: tuple[str, ...]) -> Check:
    expected = "one of " + ", ".join(repr(o) for o in options)

    def check(value: Any) -> str:
        if value not in options or not isinstance(value, str):
            close = difflib.get_close_matches(str(value), options, n=1)
            raise Invalid(expected, f"did you mean {close[0]!r}?" if close else "")
        return value

    return check


def pattern(regex: str, expected: str, max_len: int | None = None) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise Invalid(expected)
        if max_len is not None and len(value) > max_len:
            raise Invalid(expected)
        return value

    return check


def optional(check: Check) -> Check:
    def wrapped(value: Any) -> Any:
        return None if value is None else check(value)

    return wrapped


def s3_uri(strip_slash_hint: bool) -> Check:
    expected = "an s3:// URI" + (" with no trailing '/'" if strip_slash_hint else "")
    hint = "local paths go under local.parameters"

    def check(value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?", value) \
                or not value.isprintable():
            raise Invalid(expected, hint if isinstance(value, str) and "://" not in value else "")
        if strip_slash_hint and value.endswith("/"):
            raise Invalid(expected)
        return value

    return check


def location(no_trailing_slash: bool) -> Check:
    """A local run's data location: s3:// or file:// URI, or a path (relative to the spec's folder). Control
    characters are refused: a newline in a path would end up splitting the messages that name it."""
    expected = "an s3:// URI, a file:// URI or a path" + (" with no trailing '/'" if no_trailing_slash else "") + \
        ", without control characters"

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or value != value.strip() or not value.isprintable():
            raise Invalid(expected)
        if has_scheme(value) and not value.startswith(("s3://", "file://")):
            raise Invalid(expected)
        if no_trailing_slash and value.endswith("/") and value.rstrip("/"):
            raise Invalid(expected)
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


KMS_KEY = pattern(
    r"arn:aws[a-z\-]*:kms:[a-z0-9\-]+:\d{12}:(key|alias)/[\w/\-]+|alias/[\w/\-]+|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}",
    "a KMS key id, key ARN, alias/<name> or alias ARN",
    2048,
)


ISO_DURATION = pattern(
    r"P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?",
    "an ISO 8601 duration like 'P30D' or 'PT12H'",
)


JOB_NAME_PREFIX = pattern(
    r"[a-zA-Z0-9](-*[a-zA-Z0-9])*",
    f"letters, digits and hyphens, at most {MAX_JOB_NAME_PREFIX} characters (job names are limited to 63 "
    "and SageMaker appends the step and a unique suffix)",
    MAX_JOB_NAME_PREFIX,
)


INSTANCE_TYPE = pattern(r"ml\.[a-z0-9]+(\.[a-z0-9]+)+", "a SageMaker instance type like 'ml.m5.xlarge'")


NON_EMPTY = pattern(r"\S(.*\S)?", "a non-empty string")
# A CSV/TSV field delimiter: one character, not a quote or a line break (pyarrow's ParseOptions.delimiter).
DELIMITER = pattern(r'[^"\r\n]', 'one character such as ";" or "|" (a tab: "\\t", in double quotes)')


def has_scheme(value: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value) is not None


# Instance types with local NVMe instance storage: SageMaker encrypts it with a hardware module, and both
# CreateTrainingJob and CreateProcessingJob refuse a VolumeKmsKeyId with them (API reference, ResourceConfig
# and ProcessingClusterConfig, VolumeKmsKeyId: "You can't request a VolumeKmsKeyId when using an instance type
# with local storage"). By EC2 naming, a family whose attributes include "d" has it (ml.m5d, ml.c5d, ml.r5d,
# ml.g4dn, ml.p3dn, ml.p4d, ml.m6id...); these have it without the letter (ResourceConfig.VolumeSizeInGB names
# ml.p4d, ml.g4dn and ml.g5 as the NVMe families).
INSTANCE_STORE_FAMILIES = frozenset({"g5", "g6", "g6e", "gr6", "p5", "p5e", "p5en", "p6", "trn1", "trn1n", "trn2"})


def has_instance_store(instance_type: str) -> bool:
    match = re.fullmatch(r"ml\.(([a-z]+)\d+([a-z-]*))\.\w+", instance_type)
    if not match:
        return False
    family, _, attributes = match.groups()
    return "d" in attributes or family in INSTANCE_STORE_FAMILIES


def kms_instance_store_message(key: str, instance_type: str) -> str:
    return (f"security.volume_kms_key {key!r} cannot be used with {instance_type}: its instance-store volumes "
            "are encrypted by the instance itself and SageMaker refuses a VolumeKmsKeyId for them; remove "
            "security.volume_kms_key or use an instance type without local storage")

