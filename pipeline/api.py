"""The operations behind the commands, with their checks: the CLI (pipeline/cli.py) parses, calls one of these
and prints; a notebook or a script can call them the same way.

Heavy modules are imported by the operation that needs them: `validate` never pays for boto3, the cloud
operations never import the local runner.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import ArtifactReadError, UsageError

Say = Callable[[str], None]


def load(spec_path: str | Path, cached: bool = True):
    """The spec and its compiled definition (JSON text); `cached`: from the definition cache when it holds it
    (pipeline/definition/cache.py); what is published is always compiled afresh."""
    from pipeline.compile import compile_definition
    from pipeline.spec import load_spec

    spec = load_spec(spec_path)
    return spec, compile_definition(spec, cached)


def load_spec(spec_path: str | Path):
    from pipeline.spec import load_spec as load

    return load(spec_path)


def spec_overrides(spec) -> list:
    """The spec's local.parameters as overrides whose errors point at their line in the spec."""
    from pipeline.definition.parameters import ParameterOverride

    return [ParameterOverride(name, value, f"{spec.where(f'local.parameters.{name}')}: local.parameters.{name}")
            for name, value in spec.local_parameters().items()]


def command_line_overrides(params: Sequence[str]) -> list:
    """--param Name=value, relative paths made absolute here (so a resume works from anywhere)."""
    from pipeline.definition.parameters import ParameterOverride, parse_param_args
    from pipeline.spec import absolute_location

    return [ParameterOverride(o.name, absolute_location(o.name, o.value, Path.cwd()), o.origin)
            for o in parse_param_args(params)]


# ---- local ---------------------------------------------------------------------------------------------------


def validate(spec_path: str | Path) -> str:
    from pipeline.definition.graph import load_definition, plan_steps
    from pipeline.definition.parameters import resolve_parameters

    spec, text = load(spec_path)
    definition = load_definition(text)
    steps = plan_steps(definition)  # the local runner can interpret everything the compiler emitted
    resolve_parameters(definition, spec_overrides(spec))
    return (f"ok: {spec_path}: pipeline {spec.name}, steps {' -> '.join(s.name for s in steps)}, "
            f"{len(definition.get('Parameters') or [])} parameters")


def run(spec_path: str | Path, params: Sequence[str], workdir: str | Path | None, echo: Say | None,
        progress: Say | None, watch=None):
    """A new local execution of the spec's definition; --param values are checked before anything runs.
    `watch` (pipeline/local/watch.py) follows the steps and hosts for a live display."""
    from pipeline.definition.parameters import checked_values
    from pipeline.local import run_local

    spec, text = load(spec_path)
    given = command_line_overrides(params)
    values = checked_values(json.loads(text), spec_overrides(spec) + given, spec.value_problem(local=True))
    check_fit(spec, values, progress)  # as strict as the cloud: the InstanceType's memory, each step's volume
    return run_local(text, values, workdir=workdir or spec.local.workdir, pipeline_name=spec.name,
                     region=spec.region, echo=echo, progress=progress, watch=watch)


def resume(execution_id: str, spec_path: str | Path, workdir: str | Path | None, echo: Say | None,
           progress: Say | None, watch=None):
    """Finish a Stopped or Failed execution: the record holds all it needs; the spec only supplies the workdir."""
    from pipeline.local import check_execution_id, resume_local

    check_execution_id(execution_id)  # before the spec is read: the id is refused whatever the spec

    return resume_local(execution_id, workdir=workdir or load_spec(spec_path).local.workdir, echo=echo,
                        progress=progress, watch=watch)


def run_summary(execution) -> list[str]:
    """What a finished local run prints: where the artifact is, its report, its registry entry, the record."""
    from pipeline.compile import ARTIFACT_OUTPUT, MERGE
    from pipeline.local import read_registration
    from steps.contract import REPORT_HTML

    artifact = execution.output_uri(MERGE, ARTIFACT_OUTPUT)
    lines = [f"artifact: {artifact}", f"report: {artifact.rstrip('/')}/{REPORT_HTML}"]
    registration = read_registration(artifact)
    if registration:
        lines.append(f"registered: {registration.get('model_package_arn')} ({registration.get('approval_status')})")
    return lines + [f"record: {execution.record_path}"]


def registry_entries(spec_path: str | Path, workdir: str | Path | None, group: str | None) -> tuple[Path, list[dict]]:
    """The local registry's path and its entries (none when it does not exist yet)."""
    from steps.formats.registry import list_local

    path = local_registry(spec_path, workdir)
    with registry_errors():
        return path, list_local(path, group) if path.exists() else []


@contextlib.contextmanager
def registry_errors():
    """A damaged local registry: the format's own message (which file, what, how to fix), as a run error."""
    from pipeline.errors import LocalRunError
    from steps.errors import StepError

    try:
        yield
    except StepError as exc:
        raise LocalRunError(str(exc)) from exc


def local_registry(spec_path: str | Path, workdir: str | Path | None) -> Path:
    from pipeline.local import REGISTRY_FILE

    return Path(workdir or load_spec(spec_path).local.workdir) / REGISTRY_FILE


def clean(spec_path: str | Path, workdir: str | Path | None, older_than: str | None, unregistered: bool,
          registered_too: bool, force: bool) -> tuple[list, list[str]]:
    """The local executions the criteria select (pipeline/local/clean.py) and, with `force`, the ids removed
    (those not kept, and not started since they were listed)."""
    from pipeline.local import clean as cleaning

    root = Path(workdir or load_spec(spec_path).local.workdir)
    age = cleaning.parse_age(older_than) if older_than is not None else None
    planned = cleaning.plan(root, age, unregistered, registered_too)
    removed = [c.id for c in planned if force and not c.kept and cleaning.remove(c, root)]
    return planned, removed


# ---- artifacts and the registry (local, or the SageMaker Model Registry with cloud=True) -----------------------


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    from steps.contract import ARTIFACT_FORMAT

    try:
        number = installed("allpairs")
    except PackageNotFoundError:
        number = "(not installed: bash scripts/setup.sh)"
    return f"allpairs {number} (artifact format {ARTIFACT_FORMAT[0]} version {ARTIFACT_FORMAT[1]})"


@contextlib.contextmanager
def artifact_errors():
    """The reader's errors as the CLI's: nothing there or a wrong question exits 2, an unreadable artifact 1."""
    from steps.formats.artifact import ArtifactError, InvalidRequest, NotFound

    try:
        yield
    except (NotFound, InvalidRequest) as exc:
        raise UsageError(str(exc)) from None
    except ArtifactError as exc:
        raise ArtifactReadError(str(exc)) from None


def open_artifact(location: str, spec_path: str | Path = "pipeline.yaml", workdir: str | Path | None = None,
                  profile: str | None = None):
    """allpairs.open(location) where a local registry entry is looked up in the spec's run directory (the
    registry `python -m pipeline run` registers into); `profile` names the AWS profile for s3:// and ARNs."""
    import allpairs
    from steps.formats.registry import LOCAL_ARN_PREFIX

    registry = local_registry(spec_path, workdir) if location.startswith(LOCAL_ARN_PREFIX) else None
    with artifact_errors():
        return allpairs.open(location, registry=registry, session=_session(profile))


def neighbors(location: str, ids: Sequence[str], k: int | None = None, spec_path: str | Path = "pipeline.yaml",
              workdir: str | Path | None = None, profile: str | None = None):
    """The neighbours of ids given as text (the command line), as a pandas DataFrame (allpairs' Artifact.neighbors)."""
    artifact = open_artifact(location, spec_path, workdir, profile)
    if artifact.manifest.id_type != "string":
        try:
            ids = [int(value) for value in ids]
        except ValueError:
            raise UsageError(f"id {next(v for v in ids if not v.lstrip('-').isdigit())!r}: the ids of {location} are "
                             f"integers ({artifact.manifest.id_source})") from None
    with artifact_errors(), artifact:
        return artifact.neighbors(list(ids), k=k)


def _session(profile: str | None):
    if not profile:
        return None  # boto3's default chain (AWS_PROFILE, environment, ~/.aws, SSO, instance role)
    import boto3
    import botocore.exceptions

    try:
        return boto3.Session(profile_name=profile)
    except botocore.exceptions.ProfileNotFound:
        raise UsageError(f"--profile {profile}: not found; pick one from ~/.aws/config") from None


def registry_list(spec_path, group: str | None, workdir=None, cloud: bool = False, region=None,
                  profile=None) -> tuple[str, list[dict]]:
    """(where the entries are, the entries): the local registry, or a Model Registry group (default: the spec's
    ModelPackageGroup) with cloud=True."""
    if not cloud:
        path, entries = registry_entries(spec_path, workdir, group)
        return str(path), entries
    from pipeline import aws

    spec = load_spec(spec_path)
    group = group or spec.parameters["ModelPackageGroup"]
    target = aws.connect(spec, region=region, profile=profile, need_role=False)
    return f"SageMaker Model Registry {target.region}, group {group}", aws.model_packages(target, group)


def registry_show(spec_path, entry: str, group: str | None = None, workdir=None, cloud: bool = False, region=None,
                  profile=None) -> dict:
    """One entry: an ARN, <group>/<version>, or a version of `group` (default: the spec's ModelPackageGroup)."""
    return _registry_entry(spec_path, entry, group, workdir, cloud, region, profile)[0]


def registry_set_status(spec_path, entry: str, status: str, group: str | None = None, workdir=None,
                        cloud: bool = False, region=None, profile=None) -> tuple[dict, dict]:
    """Approve or reject an entry: (the entry before, the entry after)."""
    from steps.contract import APPROVAL_STATUSES

    if status not in APPROVAL_STATUSES:
        raise UsageError(f"approval status {status!r}: must be one of {', '.join(APPROVAL_STATUSES)}")
    before, where = _registry_entry(spec_path, entry, group, workdir, cloud, region, profile)
    if cloud:
        from pipeline import aws

        return before, aws.set_approval(where, before["model_package_arn"], status)
    from steps.formats.registry import set_local_status

    with registry_errors():
        return before, set_local_status(where, before["model_package_arn"], status)


def _registry_entry(spec_path, entry, group, workdir, cloud, region, profile):
    """(the entry, where it lives: the local registry's path or the AWS target)."""
    name, _, version = entry.rpartition("/") if "/" in entry and ":" not in entry else ("", "", entry)
    if cloud:
        from pipeline import aws

        spec = load_spec(spec_path)
        target = aws.connect(spec, region=region, profile=profile, need_role=False)
        if aws.MODEL_PACKAGE_ARN.fullmatch(entry):
            return aws.model_package(target, entry), target
        if not version.isdigit():
            raise UsageError(f"{entry}: not a model package; pass its ARN (arn:aws:sagemaker:<region>:<account>:"
                             "model-package/<group>/<version>), <group>/<version> or a version number")
        group = name or group or spec.parameters["ModelPackageGroup"]
        found = [e for e in aws.model_packages(target, group) if str(e["version"]) == version]
        if not found:
            raise UsageError(f"{entry}: no version {version} in the model package group {group} ({target.region}); "
                             "list them with `python -m pipeline registry list --cloud`")
        return aws.model_package(target, found[0]["model_package_arn"]), target
    from steps.formats.registry import LOCAL_ARN_PREFIX, find_local, local_arn

    path = local_registry(spec_path, workdir)
    if entry.startswith(LOCAL_ARN_PREFIX):
        arn = entry
    elif version.isdigit():
        arn = local_arn(name or group or load_spec(spec_path).parameters["ModelPackageGroup"], int(version))
    else:
        raise UsageError(f"{entry}: not a registry entry; pass its ARN (local:model-package/<group>/<version>), "
                         "<group>/<version> or a version number")
    with registry_errors():
        found = find_local(path, arn)
    if found is None:
        raise UsageError(f"{entry}: no such entry in the local registry {path} ({arn}); list them with "
                         "`python -m pipeline registry list`")
    return found, path


# ---- cloud ---------------------------------------------------------------------------------------------------


def connect(spec, region: str | None, profile: str | None, role_arn: str | None):
    from pipeline import aws

    return aws.connect(spec, region=region, profile=profile, role_arn=role_arn)


def upsert(spec_path, region=None, profile=None, role_arn=None) -> tuple[str | None, str, str]:
    """(a note for stderr or None, the pipeline ARN, what changed)."""
    from pipeline import aws

    spec, text = load(spec_path, cached=False)
    aws.check_publishable(spec, role_arn or spec.role_arn)
    arn, summary = aws.upsert(connect(spec, region, profile, role_arn), spec, text)
    return aws.mutable_tag_note(spec.image), arn, summary


def diff(spec_path, region=None, profile=None, role_arn=None) -> tuple[str, list[str]]:
    """(the pipeline's name, what upsert would change: one line each, none when nothing would)."""
    from pipeline import aws

    spec, text = load(spec_path, cached=False)
    return spec.name, aws.diff(connect(spec, region, profile, role_arn), spec, text)


def start(spec_path, params: Sequence[str], region=None, profile=None, role_arn=None, say: Say | None = None):
    """Start an execution; returns (target, execution ARN, Studio link). Every --param value is checked first:
    its type by the definition, its range by the spec's rule, its length by the service's limits; then whether
    the job fits its instances and volumes (the input's shape read from S3: a listing and a few byte ranges)."""
    from pipeline import aws
    from pipeline.definition.limits import check_definition
    from pipeline.definition.parameters import checked_values, parse_param_args

    spec, text = load(spec_path)
    overrides = parse_param_args(params)  # cloud values are URIs: nothing is resolved against this machine
    values = checked_values(json.loads(text), overrides, spec.value_problem(local=False))
    given = {o.name: o.origin for o in overrides}
    check_definition(text, values, lambda name: given.get(name) or spec.where(""))
    target = connect(spec, region, profile, role_arn)
    check_fit(spec, values, say, s3=lambda uri: aws.input_objects(target, uri))
    arn, link = aws.start(target, spec, overrides, values)
    return target, arn, link


def wait(target, arn: str, say: Say, timeout: float | None) -> tuple[str, list[str]]:
    """Follow an execution to its end: (final status, the status lines)."""
    from pipeline import aws

    final = aws.wait(target, arn, say, timeout=timeout)
    return final, aws.status(target, arn).lines()


def status(spec_path, execution: str | None, region=None, profile=None, role_arn=None) -> list[str]:
    from pipeline import aws

    spec = load_spec(spec_path)
    target = connect(spec, region, profile, role_arn)
    return aws.status(target, aws.execution_arn(target, spec, execution)).lines()


def watch_status(spec_path, execution: str | None, show: Callable[[list[str]], None], interval: float = 15.0,
                 region=None, profile=None, role_arn=None) -> str:
    """Follow an execution (ARN, id, or the latest) to its end, handing `show` its status lines (steps, and the
    similarity hosts' latest metrics) every `interval` seconds; returns the final status."""
    from pipeline import aws

    spec = load_spec(spec_path)
    target = connect(spec, region, profile, role_arn)
    return aws.watch(target, aws.execution_arn(target, spec, execution), lambda state: show(state.lines()), interval)


def image_build(repository: str, tag: str | None) -> str:
    from pipeline import image

    tag = tag or image.default_tag()
    image.build(tag)
    return f"built {image.LOCAL_NAME}:{tag}; push it with: python -m pipeline image push --tag {tag} --repository {repository}"


def image_push(spec_path, repository: str, tag: str | None, say: Say, region=None, profile=None, role_arn=None) -> str:
    """Tag and push the built image to ECR; returns the line to put in the spec (the image by digest)."""
    from pipeline import aws, image

    tag = tag or image.default_tag()
    image.require_docker(tag)
    target = connect(load_spec(spec_path), region, profile, role_arn)
    uri = aws.ecr_repository(target, repository)
    image.push(uri, tag, aws.ecr_login(target), say)
    return f"image: {uri}@{aws.ecr_digest(target, repository, tag)}    # put this line in pipeline.yaml"


# ---- sizing -----------------------------------------------------------------------------------------------------


def check_fit(spec, values: dict, say: Say | None, s3=None) -> None:
    """Refuse (UsageError) parameters whose job cannot fit its instances' memory or its steps' volumes, when the
    input's shape is known cheaply and exactly; with an estimated shape (a CSV) warn instead; when the shape
    cannot be read, say so: then each step finds out when it runs (the similarity hosts check memory first)."""
    from pipeline import plan as planner

    job, why = planner.job_of_input(str(values["InputData"]), int(values["TopK"]), spec.input.id_column, s3,
                                    vector_column=spec.input.vector_column, delimiter=spec.input.delimiter)
    if job is None:
        if say:
            say(f"note: no fit check before the run: {why}; each step checks what it can as it starts "
                "(`python -m pipeline plan --rows N --dim D` sizes the job)")
        return
    fit = planner.check_fit(job, planner.Settings.of(spec), str(values["InstanceType"]), int(values["InstanceCount"]),
                            spec.where)
    planner.enforce(fit, job.exact, say)


def plan(spec_path, params: Sequence[str], *, rows: int | None = None, dim: int | None = None, k: int | None = None,
         density: float = 1.0, hours: float | None = None, gflops_per_core: float | None = None, cloud: bool = False,
         all_types: bool = False, region=None, profile=None) -> list[str]:
    """The plan's lines: sizes, disk per step, each candidate instance type's fewest hosts, time and cost, the
    recommendation and what these parameters would meet. The shape: --rows/--dim, else read from InputData
    (run's values, or with `cloud` the spec's cloud defaults: an s3:// input is read through pipeline/aws.py)."""
    from pipeline import plan as planner
    from pipeline.definition.parameters import checked_values, parse_param_args
    from steps.instances import facts

    spec, text = load(spec_path)
    if cloud:
        values = checked_values(json.loads(text), parse_param_args(params), spec.value_problem(local=False))
    else:
        values = checked_values(json.loads(text), spec_overrides(spec) + command_line_overrides(params),
                                spec.value_problem(local=True))
    k = k or int(values["TopK"])
    if k < 1 or density <= 0 or density > 1 or (hours is not None and hours <= 0):
        raise UsageError("--k must be at least 1, --density in (0, 1] and --hours above 0")
    if rows is not None or dim is not None:
        if not rows or not dim or rows < 1 or dim < 1:
            raise UsageError("--rows and --dim go together, both at least 1 (or give neither: the shape is read "
                             "from InputData)")
        job = planner.job_from_size(rows, dim, k, density)
    else:
        from pipeline import aws

        job, why = planner.job_of_input(str(values["InputData"]), k, spec.input.id_column,
                                        lambda uri: aws.input_objects(connect(spec, region, profile, None), uri),
                                        vector_column=spec.input.vector_column, delimiter=spec.input.delimiter)
        if job is None:
            raise UsageError(f"cannot read the input's shape ({why}); give it: --rows N --dim D")
    settings = planner.Settings.of(spec)
    cores = None
    if gflops_per_core:
        speed = planner.Throughput.flat(gflops_per_core)
        calibration = f"{gflops_per_core:g} GFLOP/s per core (given, not measured)"
    else:
        measured = planner.calibrate(job.dim, job.k, settings.memory_budget_mb, job.rows)
        speed, cores = planner.Throughput.measured(measured), measured["cores"]
        calibration = (f"measured here on {measured['cores']} core{'s' if measured['cores'] != 1 else ''} at dim "
                       f"{job.dim}, k {measured['k']}, in {measured['seconds']:.1f} s (steps/calibrate.py): "
                       f"{measured['gflops'] / measured['cores']:,.1f} GFLOP/s per core on "
                       f"{measured['corpus_rows']:,} rows (each pair's product once)")
    chosen = (str(values["InstanceType"]), int(values["InstanceCount"]))
    names = [t.name for t in facts().types] if all_types or not spec.instance_types else list(spec.instance_types)
    candidates = names + ([chosen[0]] if chosen[0] not in names else [])
    target = hours * 3600 if hours else settings.max_runtime_seconds / 2
    return planner.plan_lines(job, settings, candidates, chosen, speed, target, spec.where, calibration,
                              local_cores=cores)


def refuse_resume_with_params(execution_id: str, params: Sequence[str]) -> None:
    if execution_id is not None and params:
        raise UsageError(f"--resume {execution_id} takes the parameters the execution started with; drop --param "
                         "(or start a new run without --resume)")
