"""What a loaded pipeline.yaml is: typed settings, the runtime parameters' defaults, where each key was written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from steps.contract import ALL_PAIRS_MODE, DEFAULT_QUERY_FILES, SELF_RULES

from .checks import has_instance_store, kms_instance_store_message
from .parameters import absolute_location, value_problem


@dataclass(frozen=True)
class InputSettings:
    id_column: str | None
    non_finite: str  # "error" | "drop"
    vector_column: str | None = None  # parquet: the list column of vectors (default: the only one)
    delimiter: str | None = None  # CSV/TSV: one character (default: a tab for .tsv, else a comma)


@dataclass(frozen=True)
class QuerySettings:
    """Queries mode (steps/formats/queries.py): the query input's id column, how many chunk files the queries
    are cut into (balanced by count across the hosts), and whether a query may have its own id's corpus row."""

    id_column: str | None = None
    chunk_files: int = DEFAULT_QUERY_FILES
    self_rule: str = SELF_RULES[0]


@dataclass(frozen=True)
class ProcessingSettings:
    instance_type: str
    volume_gb: int
    max_runtime_seconds: int


@dataclass(frozen=True)
class PreprocessSettings(ProcessingSettings):
    chunk_rows: int  # at most; wide rows make smaller chunks
    memory_budget_mb: int = 512  # the batch and chunk buffers, sized in bytes from the row width


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
    # EnableInterContainerTrafficEncryption on every job: the hosts never talk to each other, but compliance
    # policies (an SCP on sagemaker:InterContainerTrafficEncryption) may refuse any job created without it
    encrypt_inter_container_traffic: bool = False


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
    parameters: dict[str, Any]  # defaults of the mode's runtime parameters (parameters_of), in the table's order
    instance_types: tuple[str, ...] | None
    input: InputSettings
    preprocess: PreprocessSettings
    similarity: SimilaritySettings
    merge: ProcessingSettings
    security: SecuritySettings
    retry: RetrySettings
    cache: CacheSettings
    local: LocalSettings
    mode: str = ALL_PAIRS_MODE  # or QUERIES_MODE: compiled into another definition (docs/queries.md)
    queries: QuerySettings = field(default_factory=QuerySettings)
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # YAML path -> line

    @property
    def root(self) -> Path:
        """The folder of the spec file: relative local paths are resolved against it."""
        return self.path.parent

    def local_parameters(self) -> dict[str, Any]:
        """`local.parameters` with local paths made absolute (relative to the spec's folder).

        Values with a URI scheme (s3://, file://) are left alone; non-path parameters are returned as is.
        """
        return {name: absolute_location(name, value, self.root) for name, value in self.local.parameters.items()}

    def value_problem(self, *, local: bool) -> Callable[[str, Any], str | None]:
        """The rule for a parameter value given at run or start time: its range, and what this spec adds (an
        InstanceType with instance storage cannot take the spec's volume KMS key)."""
        def problem(name: str, value: Any) -> str | None:
            found = value_problem(name, value, local=local)
            key = self.security.volume_kms_key
            if not found and name == "InstanceType" and key and isinstance(value, str) and has_instance_store(value):
                found = kms_instance_store_message(key, value)
            return found
        return problem

    def where(self, yaml_path: str) -> str:
        """`file:line` of a YAML path, for errors raised after loading (e.g. by the compiler)."""
        line = self.lines.get(yaml_path)
        return f"{display(self.path)}:{line}" if line else display(self.path)


def display(path: Path) -> str:
    """The spec's path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

