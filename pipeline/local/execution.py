"""A local pipeline execution: check everything, then run the steps in order, recording progress as it goes.

Reliability (issues 5 and 11):
- Ctrl-C, SIGTERM and SIGHUP stop at a safe point (pipeline/local/interrupts.py): hosts get SIGTERM, the
  execution is marked Stopped, no artifact or registry entry appears, and the last progress line says how to
  resume. A runner killed outright takes its hosts with it (pipeline/local/hosts.py, die_with_runner).
- resume_local(execution_id) runs a Stopped or Failed execution again under the same id (a name, never a
  path): same parameters, same definition, same output and checkpoint locations; steps that Succeeded are
  skipped (their recorded properties feed the later steps) unless their published output changed since, and
  Similarity resumes from its checkpoints. The attempt before is kept as <step>.attempt-<n>/ beside the new one.
- One process tree per execution at a time: executions/<id>/.lock (flock), inherited by every host, so it
  is held until the runner and all its hosts are gone (pipeline/local/lock.py). Concurrent runs get distinct
  ids (their directories are created exclusively), distinct output prefixes and distinct registry versions.
- ALLPAIRS_FAULTS injects host faults (pipeline/local/faults.py); parsed before anything runs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

from pipeline.errors import AllpairsError, DefinitionError, LocalRunError, UsageError, os_problem
from steps.io import write_json
from steps.contract import LOCAL_REGISTRY_ENV, REGISTRATION_FILE

from pipeline.definition.expressions import JOB_NAME_VARIABLES, Scope, utc_text
from .faults import FAULTS_ENV, Fault, parse_faults
from .interrupts import graceful_sigint
from .jobs import JobContext, job_name, run_processing, run_training
from .lock import ExecutionLock
from pipeline.definition.parameters import ParameterOverride, resolve_parameters
from pipeline.definition.graph import StepPlan, load_definition, output_uri_property, plan_steps
from .storage import is_s3, join_uri, local_path, one_line, s3_client, signature_change, split_s3, tree_signature
from .watch import Watch

REGISTRY_ENV = LOCAL_REGISTRY_ENV  # the container contract, section 3
REGISTRY_FILE = "registry.sqlite"
RECORD_FILE = "execution.json"
RECORD_FORMAT, RECORD_VERSION = "allpairs.local-execution", 1
LOCK_FILE = ".lock"
RUNNERS = {"Processing": run_processing, "Training": run_training}
JOB_NAME_VARIABLE = {step_type: variable for variable, step_type in JOB_NAME_VARIABLES.items()}

Progress = Callable[[str], None]


@dataclass
class StepRecord:
    name: str
    type: str
    status: str = "NotStarted"  # NotStarted | Executing | Succeeded | Failed | Stopped
    job_name: str | None = None
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    failure_reason: str | None = None
    arguments: dict = field(default_factory=dict)  # resolved: what the job was started with
    properties: dict = field(default_factory=dict)
    hosts: dict = field(default_factory=dict)  # host -> {"exit_code", "log", "reason"}
    published: dict = field(default_factory=dict)  # output URI -> what it held once published (storage.tree_signature)


@dataclass
class Execution:
    id: str
    pipeline_name: str
    directory: Path
    workdir: Path
    parameters: dict
    started: str
    steps: dict[str, StepRecord]
    status: str = "Executing"  # Executing | Succeeded | Failed | Stopped
    region: str | None = None  # for the execution ARNs; kept so a resume needs nothing but the id
    ended: str | None = None
    failure_reason: str | None = None

    @property
    def record_path(self) -> Path:
        return self.directory / RECORD_FILE

    def save(self) -> None:
        """Rewritten atomically after every change: a reader never sees a half-written record."""
        record = asdict(self)
        record.update(format=RECORD_FORMAT, version=RECORD_VERSION, directory=str(self.directory), workdir=str(self.workdir))
        record["steps"] = [asdict(step) for step in self.steps.values()]
        write_json(self.record_path, record)

    def output_uri(self, step: str, output: str) -> str | None:
        """Where a processing step's named output landed (None if the step did not get that far)."""
        record = self.steps.get(step)
        return record.properties.get(output_uri_property(output)) if record else None


def new_execution_id(now: datetime) -> str:
    return f"local-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


EXECUTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one path component: never "", ".", ".." or a path


def check_execution_id(execution_id: str) -> None:
    """An execution id names a folder under <workdir>/executions: it is a name, never a path (a path would read
    a record, and run a definition, from anywhere)."""
    if not EXECUTION_ID.fullmatch(execution_id) or ".." in execution_id:
        raise UsageError(f"--resume {execution_id!r}: an execution id is a name like "
                         "local-20261126T082450Z-e97f95 (letters, digits, '.', '_' and '-'), not a path; pass the id "
                         "the run printed, and its run directory with --workdir")


def overrides_from_mapping(values: Mapping[str, object], origin: str) -> list[ParameterOverride]:
    """Typed values (from the spec, or a caller's dict) as overrides; `origin` starts their error messages."""
    return [ParameterOverride(name, value, f"{origin}.{name}") for name, value in values.items()]


def run_local(
    definition: str | Mapping,
    parameters: Mapping[str, object] | Iterable[ParameterOverride] = (),
    *,
    workdir: str | Path,
    pipeline_name: str,
    region: str | None = None,
    echo: Progress | None = None,
    progress: Progress | None = None,
    faults: str | None = None,
    watch: Watch | None = None,
) -> Execution:
    """Run a compiled definition on this machine. Everything is checked before the first step starts.

    `parameters` overrides the definition's defaults (a dict of values, or ParameterOverride from --param),
    typed as the definition declares them; whether a value is in range is the product's rule, checked where the
    value entered (pipeline/api.py), since the runner interprets any definition;
    `echo` receives every process output line ("[Similarity algo-2] ..."); `progress` one line per step event;
    `faults` is an ALLPAIRS_FAULTS value (default: that environment variable); `watch` (pipeline/local/watch.py)
    follows the steps and every host as they run, for a live display.
    Raises LocalRunError when a step fails (the record in <workdir>/executions/<id>/execution.json says more),
    KeyboardInterrupt when stopped by Ctrl-C (the execution is then Stopped and can be resumed).
    """
    definition = load_definition(definition)
    plans = plan_steps(definition)
    if isinstance(parameters, Mapping):
        parameters = overrides_from_mapping(parameters, "parameter")
    parameters = list(parameters)
    values = resolve_parameters(definition, parameters)
    injected = injected_faults(faults, plans)
    try:
        execution = start_execution(definition, plans, values, Path(workdir), pipeline_name, region)
    except OSError as exc:  # a file where the folder should be, read-only, a name too long, a full disk
        raise UsageError(f"run directory {workdir}: {os_problem(exc)}") from exc
    return run_execution(execution, plans, echo, progress, injected, watch=watch)


def resume_local(
    execution_id: str,
    *,
    workdir: str | Path,
    echo: Progress | None = None,
    progress: Progress | None = None,
    faults: str | None = None,
    watch: Watch | None = None,
) -> Execution:
    """Run a Stopped or Failed execution again under its own id: steps that Succeeded are skipped, the others
    run again (Similarity resumes from the execution's checkpoints). Everything it needs is in the execution's
    record (parameters, definition, region), so no spec is read."""
    check_execution_id(execution_id)
    execution, definition = load_execution(Path(os.path.abspath(workdir)), execution_id)
    plans = plan_steps(definition)
    return run_execution(execution, plans, echo, progress, injected_faults(faults, plans), resuming=True, watch=watch)


def injected_faults(faults: str | None, plans: list[StepPlan]) -> list[Fault]:
    """The faults to inject: `faults` if given, else the ALLPAIRS_FAULTS environment variable."""
    return parse_faults(os.environ.get(FAULTS_ENV) if faults is None else faults, plans)


def load_execution(workdir: Path, execution_id: str) -> tuple[Execution, dict]:
    directory = workdir / "executions" / execution_id
    try:
        record = json.loads((directory / RECORD_FILE).read_text())
        definition_text = (directory / "definition.json").read_text()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume {execution_id}: no readable execution record in {directory} ({one_line(exc)}); "
                         f"pass the execution id printed by the run, and the same --workdir") from exc
    if isinstance(record, dict) and record.get("status") == "Succeeded":
        raise UsageError(f"--resume {execution_id}: that execution already Succeeded; nothing to resume "
                         "(start a new run for new results)")
    try:
        if (record.get("format"), record.get("version")) != (RECORD_FORMAT, RECORD_VERSION):
            raise ValueError(f"format {record.get('format')!r} version {record.get('version')!r}")
        steps = {s["name"]: StepRecord(**s) for s in record["steps"]}
        definition = load_definition(definition_text)
        if [p.name for p in plan_steps(definition)] != list(steps):
            raise ValueError("its steps are not the steps of its definition.json")
        execution = Execution(execution_id, str(record["pipeline_name"]), directory, workdir,
                              dict(record["parameters"]), str(record["started"]), steps, region=record.get("region"))
    except (AttributeError, KeyError, TypeError, ValueError, DefinitionError) as exc:
        raise UsageError(f"--resume {execution_id}: {directory / RECORD_FILE} or definition.json is damaged ({one_line(exc)}), so "
                         "the execution cannot be resumed; start a new run (its checkpoints are not reused)") from exc
    return execution, definition


def run_execution(execution: Execution, plans: list[StepPlan], echo: Progress | None,
                  progress: Progress | None, faults: list[Fault], resuming: bool = False,
                  watch: Watch | None = None) -> Execution:
    try:
        return _run_execution(execution, plans, echo, progress, faults, resuming, watch)
    except OSError as exc:  # the runner's own files (record, lock, staging, publishing): a full disk, a permission
        raise LocalRunError(f"execution {execution.id}: {os_problem(exc)} (record: {execution.record_path})") from exc


def _run_execution(execution: Execution, plans: list[StepPlan], echo: Progress | None,
                   progress: Progress | None, faults: list[Fault], resuming: bool, watch: Watch | None) -> Execution:
    say = progress or (lambda line: None)
    if watch:
        watch.planned([plan.name for plan in plans])
    with execution_lock(execution) as lock, graceful_sigint() as stop:
        say(f"execution {execution.id}: {execution.directory}" + (" (resumed)" if resuming else ""))
        if resuming:
            reset_unfinished_steps(execution, say)
        scope = Scope(execution.parameters, execution_variables(execution), properties={})
        try:
            for plan in plans:
                record = execution.steps[plan.name]
                if record.status == "Succeeded":  # only when resuming: its outputs are where it put them
                    scope.properties[plan.name] = record.properties
                    say(f"{plan.name}: Succeeded before, skipped")
                    if watch:
                        watch.step_ended(plan.name, "Skipped", record.seconds)
                    continue
                stop.raise_if_requested()
                run_step(plan, execution, scope, echo, say, faults, lock, watch)
        except KeyboardInterrupt:
            finish(execution, "Stopped", "interrupted")
            say(f"execution {execution.id}: Stopped; nothing was published or registered. {resume_hint(execution)}")
            raise
        except Exception as exc:
            finish(execution, "Failed", str(exc))
            raise
        finish(execution, "Succeeded", None)
    say(f"execution {execution.id}: Succeeded")
    return execution


def resume_hint(execution: Execution) -> str:
    return (f"Resume it with: python -m pipeline run --resume {execution.id} --workdir {execution.workdir} "
            "(finished steps are kept; Similarity resumes from its checkpoints)")


def execution_lock(execution: Execution) -> ExecutionLock:
    """One process tree per execution: a second run or resume of the same id is refused, not interleaved, also
    while hosts of a runner that died are still finishing (pipeline/local/lock.py)."""
    return ExecutionLock(execution.directory / LOCK_FILE, execution.id)


def reset_unfinished_steps(execution: Execution, say: Progress) -> None:
    """Every step that did not succeed runs again from scratch; its attempt before is kept beside it. So does a
    step that succeeded but whose published output changed since (a file deleted, replaced or edited: its
    consumers would fail on it, or compute on other data than the record says), and every step after it."""
    rerun = False
    for record in execution.steps.values():
        if record.status == "Succeeded" and not rerun:
            change = output_change(record)
            if not change:
                continue
            say(f"{record.name}: its output {change[0]} changed since it succeeded ({change[1]}): running it again, "
                "and every step after it")
            rerun = True
        old = execution.directory / record.name
        if old.exists():
            n = 1
            while (execution.directory / f"{record.name}.attempt-{n}").exists():
                n += 1
            os.replace(old, execution.directory / f"{record.name}.attempt-{n}")
        execution.steps[record.name] = StepRecord(record.name, record.type)
    execution.status, execution.ended, execution.failure_reason = "Executing", None, None
    execution.save()


def output_change(record: StepRecord) -> tuple[str, str] | None:
    """(uri, what changed) for the first output of a succeeded step that no longer holds what it published."""
    for uri, published in record.published.items():
        change = signature_change(published, tree_signature(uri, f"step {record.name}"))
        if change:
            return uri, change
    return None


def start_execution(definition: Mapping, plans: list[StepPlan], values: dict, workdir: Path, pipeline_name: str,
                    region: str | None = None) -> Execution:
    workdir = Path(os.path.abspath(workdir))
    for _ in range(5):  # the directory is created exclusively: two runs can never share an id
        now = datetime.now(timezone.utc)
        execution_id = new_execution_id(now)
        directory = workdir / "executions" / execution_id
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise LocalRunError(f"{workdir / 'executions'}: could not create a new execution directory; check it")
    steps = {p.name: StepRecord(p.name, p.type) for p in plans}
    execution = Execution(execution_id, pipeline_name, directory, workdir, values, utc_text(now), steps, region=region)
    try:
        write_json(directory / "definition.json", definition)  # the exact program this execution ran
        execution.save()
    except BaseException:  # a full disk: no execution directory without its record
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return execution


def execution_variables(execution: Execution) -> dict[str, str]:
    pipeline_arn = f"arn:aws:sagemaker:{execution.region or 'local'}:000000000000:pipeline/{execution.pipeline_name.lower()}"
    return {
        "PipelineExecutionId": execution.id,
        "PipelineName": execution.pipeline_name,
        "PipelineArn": pipeline_arn,
        "PipelineExecutionArn": f"{pipeline_arn}/execution/{execution.id}",
        "StartDateTime": execution.started,
    }


def run_step(plan: StepPlan, execution: Execution, scope: Scope, echo: Progress | None, say: Progress,
             faults: list[Fault] = (), lock: ExecutionLock | None = None, watch: Watch | None = None) -> None:
    record = execution.steps[plan.name]
    record.job_name = job_name(execution.pipeline_name, plan, execution.id.rsplit("-", 1)[1])
    record.status, record.started = "Executing", utc_text(datetime.now(timezone.utc))
    execution.save()
    say(f"{plan.name}: started ({plan.type} job {record.job_name})")
    if watch:
        watch.step_started(plan.name, record.job_name)
    clock = time.monotonic()
    ctx = JobContext(execution.directory / plan.name, record.job_name, Path.cwd(), step_environment(plan, execution), echo,
                     faults=list(faults), lock=lock, watch=watch)
    try:
        job_scope = scope.for_job(JOB_NAME_VARIABLE[plan.type], record.job_name)
        record.arguments = job_scope.resolve(plan.arguments, f"step {plan.name}, Arguments")
        record.properties = RUNNERS[plan.type](plan, record.arguments, ctx)
    except BaseException as exc:
        reason = (str(exc) if isinstance(exc, AllpairsError) else f"step {plan.name}: {os_problem(exc)}"
                  if isinstance(exc, OSError) else f"step {plan.name}: {one_line(exc)}")
        end_step(record, ctx, clock, "Stopped" if isinstance(exc, KeyboardInterrupt) else "Failed", reason)
        save_if_possible(execution)
        if watch:
            watch.step_ended(plan.name, record.status, record.seconds)
        say(f"{plan.name}: {record.status} after {record.seconds:.1f} s")
        if isinstance(exc, (AllpairsError, KeyboardInterrupt)):
            raise
        raise LocalRunError(f"{reason} (record: {execution.record_path})") from exc
    end_step(record, ctx, clock, "Succeeded", None)
    record.published = {uri: tree_signature(uri, f"step {plan.name}") for uri in ctx.published}
    scope.properties[plan.name] = record.properties
    execution.save()
    if watch:
        watch.step_ended(plan.name, "Succeeded", record.seconds)
    say(f"{plan.name}: Succeeded in {record.seconds:.1f} s")


def end_step(record: StepRecord, ctx: JobContext, clock: float, status: str, reason: str | None) -> None:
    record.status, record.failure_reason = status, reason
    record.ended = utc_text(datetime.now(timezone.utc))
    record.seconds = round(time.monotonic() - clock, 3)
    record.hosts = {r.host: {"exit_code": r.exit_code, "log": str(r.log), "reason": r.reason,
                             **({"restarts": r.restarts} if r.restarts else {}),  # restarts: injected faults
                             "seconds": r.seconds, "peak_rss_bytes": r.peak_rss,  # measured by the runner
                             **({"progress": r.progress} if r.progress else {})}  # its last progress line
                    for r in ctx.host_results}


def finish(execution: Execution, status: str, reason: str | None) -> None:
    execution.status, execution.failure_reason = status, reason
    execution.ended = utc_text(datetime.now(timezone.utc))
    if status == "Succeeded":
        execution.save()
    else:
        save_if_possible(execution)


def save_if_possible(execution: Execution) -> None:
    """Record a failure or a stop unless the disk refuses even that (full): the reason that is on its way out
    matters more than the record, which then keeps its last saved state (and the execution stays resumable)."""
    try:
        execution.save()
    except OSError:
        pass


def step_environment(plan: StepPlan, execution: Execution) -> dict[str, str]:
    """The environment every host of the step starts from (the definition's Environment is added per host)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root()), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the log (and --verbose) as they are written
    if plan.type == "Processing":  # Merge registers into the embedded registry (container contract, section 3)
        env[REGISTRY_ENV] = str(execution.workdir / REGISTRY_FILE)
    return env


def package_root() -> Path:
    """The directory holding the `steps` package, so `python -m steps.x` imports in every host."""
    return Path(importlib.util.find_spec("steps").origin).parent.parent


def read_registration(artifact_uri: str | None) -> dict | None:
    """The artifact's registration.json (local path or s3), or None when there is none."""
    if not artifact_uri:
        return None
    uri = join_uri(artifact_uri, REGISTRATION_FILE)
    try:
        if is_s3(uri):
            return read_s3_json(uri)
        path = local_path(uri)
        return json.loads(path.read_text()) if path.is_file() else None
    except Exception as exc:
        raise LocalRunError(f"{uri}: cannot read the registration record: {one_line(exc)}") from exc


def read_s3_json(uri: str) -> dict | None:
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)
