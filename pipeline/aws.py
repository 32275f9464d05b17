"""The one module of pipeline/ that talks to AWS: upsert, diff, start, status, and the ECR side of the image.

What is sent is exactly what `python -m pipeline definition` prints (DESIGN rule 1: one artifact, two runners),
through boto3 directly: no SDK rebuild, no telemetry, no SDK config files. Every failure is one AwsError or
UsageError line naming the cause and the fix. See docs/aws.md for the commands.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pipeline.definition.diff import changed_summary, definition_diff
from pipeline.definition.limits import plain_text
from pipeline.definition.parameters import resolve_parameters
from pipeline.errors import AwsError, UsageError
from pipeline.sdk import CHATTY_LOGGERS
from pipeline.spec import Spec
from steps.contract import METRIC_DEFINITIONS, METRICS_NAMESPACE

# 123456789012 is the account of AWS's documentation examples, and of the shipped pipeline.yaml.
PLACEHOLDER_ACCOUNT = "123456789012"
TERMINAL = ("Succeeded", "Failed", "Stopped")
IMAGE_COMMANDS = "python -m pipeline image build && python -m pipeline image push"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where the commands act: a boto3 session, its region, and the pipeline's role."""

    session: Any  # boto3.Session
    region: str
    role_arn: str

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=self.region)


def connect(spec: Spec, region: str | None = None, profile: str | None = None, role_arn: str | None = None,
            need_role: bool = True) -> Target:
    """Region: --region, else AWS_REGION / AWS_DEFAULT_REGION, else the spec. Credentials: --profile, else the
    usual chain (AWS_PROFILE, environment, ~/.aws, SSO, instance role). AWS_ENDPOINT_URL is honoured by boto3.
    The Model Registry commands act as the user, not as the pipeline: they need no role (`need_role=False`)."""
    import boto3
    import botocore.exceptions

    quiet()
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or spec.region
    if not region:
        raise AwsError(f"{spec.where('region')}: no AWS region: set region in the spec, pass --region or set AWS_REGION")
    role = role_arn or spec.role_arn or ""
    if not role and need_role:
        raise AwsError(f"{spec.where('role_arn')}: no IAM role for the pipeline: set role_arn in the spec or pass --role-arn")
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        credentials = session.get_credentials()
    except botocore.exceptions.ProfileNotFound as exc:
        raise AwsError(f"AWS profile {exc.kwargs.get('profile')!r} not found; pick one from ~/.aws/config or unset "
                       "AWS_PROFILE") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise AwsError(f"cannot load AWS credentials: {exc}; check AWS_PROFILE and ~/.aws/config") from None
    if credentials is None:
        raise AwsError("no AWS credentials found; run `aws configure` or `aws sso login`, or set AWS_PROFILE "
                       "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    return Target(session, region, role)


def quiet() -> None:
    """One clean line per outcome: the SDK's and botocore's INFO chatter and warnings are noise here."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"(sagemaker|botocore|boto3)(\..*)?")


def call(what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """One AWS call; a failure becomes one line with the cause and the fix."""
    import botocore.exceptions

    try:
        return fn(**kwargs)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise aws_error(what, exc) from None


def aws_error(what: str, exc: Exception) -> AwsError:
    """The one-line AwsError for a botocore failure of `what`: the cause, and the fix."""
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AwsError(f"{what}: no AWS credentials found; run `aws configure` or `aws sso login`, or set "
                        "AWS_PROFILE")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return AwsError(f"{what}: cannot reach {exc.kwargs.get('endpoint_url')}; check the network, the region "
                        "and AWS_ENDPOINT_URL")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Error")
        message = next((line.strip() for line in str(error.get("Message") or exc).splitlines() if line.strip()), "")
        http = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException", "ExpiredToken"):
            fix = "refresh your AWS credentials (`aws sso login`, or new access keys)"
        elif code in ("AccessDeniedException", "AccessDenied"):
            fix = "your AWS identity needs this permission; ask your administrator"
        elif code == "ThrottlingException":
            fix = "retry in a minute"
        elif http >= 500:
            code, message, fix = f"HTTP {http}", "the service failed", "retry later"
        else:
            fix = "fix what AWS names above and retry"
        return AwsError(f"{what}: {code}: {message[:300]}; {fix}")
    return AwsError(f"{what}: {exc}; check your AWS configuration")


# ---------------------------------------------------------------------------------------------------------
# Image: placeholder detection and ECR


def check_publishable(spec: Spec, role_arn: str) -> None:
    """Refuse the shipped placeholders before anything is sent (UsageError names the fix)."""
    reason = placeholder_reason(spec, role_arn)
    if reason:
        raise UsageError(reason)


def placeholder_reason(spec: Spec, role_arn: str) -> str | None:
    """Why the spec still names the example account (None when it does not)."""
    if f"{PLACEHOLDER_ACCOUNT}.dkr.ecr." in spec.image or spec.image.startswith(f"{PLACEHOLDER_ACCOUNT}."):
        return (f"{spec.where('image')}: image: {spec.image} is the placeholder (account {PLACEHOLDER_ACCOUNT}); "
                f"build and push the real one with `{IMAGE_COMMANDS}` and put the printed URI in image")
    if f"::{PLACEHOLDER_ACCOUNT}:" in role_arn:
        return (f"{spec.where('role_arn')}: role_arn: {role_arn} is the placeholder (account {PLACEHOLDER_ACCOUNT}); "
                "set role_arn to your SageMaker execution role or pass --role-arn")
    return None


def mutable_tag_note(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    tag = image.rsplit("/", 1)[-1].partition(":")[2] or "latest"
    return (f"note: image is named by the tag {tag!r}: each job runs whatever it points to then; pin the digest "
            "that `python -m pipeline image push` prints") if tag == "latest" else None


def ecr_repository(target: Target, name: str) -> str:
    """The repository URI, creating the repository (scan on push, immutable tags) if missing."""
    import botocore.exceptions

    ecr = target.client("ecr")
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
            raise aws_error(f"ECR describe_repositories {name}", exc) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise aws_error(f"ECR describe_repositories {name}", exc) from None
    created = call(f"ECR create_repository {name}", ecr.create_repository, repositoryName=name,
                   imageTagMutability="IMMUTABLE", imageScanningConfiguration={"scanOnPush": True})
    return created["repository"]["repositoryUri"]


def ecr_login(target: Target) -> tuple[str, str, str]:
    """(registry, user, password) for `docker login`."""
    import base64

    data = call("ECR get_authorization_token", target.client("ecr").get_authorization_token)["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return data["proxyEndpoint"].removeprefix("https://"), user, password


def ecr_digest(target: Target, repository: str, tag: str) -> str:
    images = call(f"ECR describe_images {repository}:{tag}", target.client("ecr").describe_images,
                  repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"]
    return images[0]["imageDigest"]


# ---------------------------------------------------------------------------------------------------------
# The input's shape, read cheaply (the fit check of `start`): a listing and a few byte ranges

MAX_INPUT_KEYS = 10000  # listed at most; steps/input_shape.py extrapolates past the files it reads


def input_objects(target: Target, uri: str) -> tuple[list[tuple[str, int]], Callable[[str, int, int], bytes]]:
    """The objects of an s3:// file or prefix as (key relative to it, bytes), and a reader of their byte ranges
    (a negative offset counts from the end), for steps.input_shape.read_shape."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if not match:
        raise UsageError(f"{uri}: not an s3:// URI")
    bucket, key = match.group(1), match.group(2)
    s3 = target.client("s3")
    prefix = key if not key or key.endswith("/") else key + "/"
    files: list[tuple[str, int]] = []
    token = None
    while len(files) < MAX_INPUT_KEYS:
        page = call(f"S3 list_objects_v2 {uri}", s3.list_objects_v2, Bucket=bucket, Prefix=prefix,
                    **({"ContinuationToken": token} if token else {}))
        files += [(o["Key"][len(prefix):], o["Size"]) for o in page.get("Contents", []) if o["Key"] != prefix]
        token = page.get("NextContinuationToken")
        if not token:
            break
    base = prefix
    if not files and key:  # a single object
        head = call(f"S3 head_object {uri}", s3.head_object, Bucket=bucket, Key=key)
        files, base = [(key.rsplit("/", 1)[-1], head["ContentLength"])], key[:len(key) - len(key.rsplit("/", 1)[-1])]

    def read(name: str, offset: int, length: int) -> bytes:
        span = f"bytes=-{-offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"
        body = call(f"S3 get_object {uri}", s3.get_object, Bucket=bucket, Key=base + name, Range=span)["Body"]
        return body.read()[:length]
    return files, read


# ---------------------------------------------------------------------------------------------------------
# Pipelines


@dataclass(frozen=True)
class Deployed:
    arn: str
    definition: str
    role_arn: str
    description: str


def describe(target: Target, name: str) -> Deployed | None:
    """The deployed pipeline, or None when there is none of that name in the region."""
    import botocore.exceptions

    sm = target.client("sagemaker")
    try:
        found = sm.describe_pipeline(PipelineName=name)
    except botocore.exceptions.ClientError as exc:
        # The service says ResourceNotFound; moto a ValidationException "Could not find pipeline ...".
        error = exc.response.get("Error", {})
        text = str(error.get("Message", "")).lower()
        if error.get("Code") == "ResourceNotFound" or "could not find" in text or "does not exist" in text:
            return None
        raise aws_error(f"SageMaker describe_pipeline {name}", exc) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise aws_error(f"SageMaker describe_pipeline {name}", exc) from None
    return Deployed(found["PipelineArn"], found["PipelineDefinition"], found.get("RoleArn", ""),
                    found.get("PipelineDescription", ""))


def require(target: Target, name: str) -> Deployed:
    deployed = describe(target, name)
    if deployed is None:
        raise AwsError(f"pipeline {name} not found in {target.region}; publish it first: python -m pipeline upsert "
                       "(or pass --region where it lives)")
    return deployed


def check_role(target: Target, role_arn: str) -> None:
    """The role must exist and trust SageMaker. Without iam:GetRole permission, the check is skipped."""
    import urllib.parse

    import botocore.exceptions

    name = role_arn.rsplit("/", 1)[-1]
    try:
        role = target.client("iam").get_role(RoleName=name)["Role"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            raise AwsError(f"role {role_arn} does not exist; create it (trusting sagemaker.amazonaws.com) or pass "
                           "--role-arn with an existing SageMaker execution role") from None
        return  # AccessDenied: the service checks the role itself when a job starts
    policy = role.get("AssumeRolePolicyDocument")
    if isinstance(policy, str):
        policy = json.loads(urllib.parse.unquote(policy))
    if "sagemaker.amazonaws.com" not in json.dumps(policy or {}):
        raise AwsError(f"role {role_arn} does not trust sagemaker.amazonaws.com; add it to the role's trust "
                       "policy or pass --role-arn with a SageMaker execution role")


def upsert(target: Target, spec: Spec, definition: str) -> tuple[str, str]:
    """Create or update the pipeline; returns (ARN, one-line summary of what changed)."""
    check_publishable(spec, target.role_arn)
    check_role(target, target.role_arn)
    sm = target.client("sagemaker")
    tags = [{"Key": key, "Value": value} for key, value in spec.tags.items()]
    description = f"allpairs: top-{spec.parameters['TopK']} cosine neighbours of every row (from {spec.path.name})"
    common = dict(PipelineName=spec.name, PipelineDisplayName=spec.name, PipelineDefinition=definition,
                  PipelineDescription=description, RoleArn=target.role_arn)
    deployed = describe(target, spec.name)
    if deployed is None:
        arn = call(f"SageMaker create_pipeline {spec.name}", sm.create_pipeline, **common,
                   ClientRequestToken=str(uuid.uuid4()), **({"Tags": tags} if tags else {}))["PipelineArn"]
        return arn, "created"
    current_tags = {t["Key"]: t["Value"] for t in _tags(target, deployed.arn)}
    missing_tags = [t for t in tags if current_tags.get(t["Key"]) != t["Value"]]
    changes = changed_summary(deployed.definition, definition)
    if deployed.role_arn != target.role_arn:
        changes.append("role changed")
    if missing_tags:
        changes.append(f"{len(missing_tags)} tag{'s' if len(missing_tags) != 1 else ''} set")
    if not changes and deployed.description == description:
        return deployed.arn, "unchanged"
    arn = call(f"SageMaker update_pipeline {spec.name}", sm.update_pipeline,
               **common)["PipelineArn"]
    if missing_tags:
        call(f"SageMaker add_tags {spec.name}", sm.add_tags, ResourceArn=arn, Tags=missing_tags)
    return arn, "updated: " + (", ".join(changes) or "description changed")


def _tags(target: Target, arn: str) -> list[dict]:
    sm = target.client("sagemaker")
    return call(f"SageMaker list_tags {arn}", sm.list_tags, ResourceArn=arn).get("Tags", [])


def diff(target: Target, spec: Spec, definition: str) -> list[str]:
    deployed = require(target, spec.name)
    lines = definition_diff(deployed.definition, definition)
    if deployed.role_arn != target.role_arn:
        lines.append(f"~ role: {deployed.role_arn} -> {target.role_arn}")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Executions


def start(target: Target, spec: Spec, overrides: Sequence[Any], values: dict[str, Any]) -> tuple[str, str]:
    """Start an execution with `values` (checked by the caller); returns (execution ARN, Studio link). The
    overrides must also be parameters of the deployed pipeline, checked before the call."""
    given = {o.name: o for o in overrides}
    deployed = require(target, spec.name)
    try:
        resolve_parameters(json.loads(deployed.definition), overrides)
    except UsageError as exc:
        raise UsageError(f"{exc} (in the deployed pipeline {spec.name}: run `python -m pipeline upsert` first)") from None
    sm = target.client("sagemaker")
    params = [{"Name": o.name, "Value": plain_text(values[o.name])} for o in given.values()]
    arn = call(f"SageMaker start_pipeline_execution {spec.name}", sm.start_pipeline_execution,
               PipelineName=spec.name, PipelineParameters=params, ClientRequestToken=str(uuid.uuid4()))[
        "PipelineExecutionArn"]
    return arn, studio_link(target, arn)


def studio_link(target: Target, execution_arn: str) -> str:
    """Studio's page of the execution when the account has a Studio domain, else the console's pipelines page."""
    import botocore.exceptions

    pipeline, execution = _split_execution_arn(execution_arn)
    try:
        domains = target.client("sagemaker").list_domains().get("Domains", [])
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        domains = []
    domain = next((d["DomainId"] for d in domains if d.get("Status") in ("InService", None)), None)
    if domain:
        return (f"https://studio-{domain}.studio.{target.region}.sagemaker.aws/pipelines/{pipeline}/"
                f"executions/{execution}/graph")
    return f"https://{target.region}.console.aws.amazon.com/sagemaker/home?region={target.region}#/pipelines"


def _split_execution_arn(arn: str) -> tuple[str, str]:
    match = re.fullmatch(r"arn:aws[a-z\-]*:sagemaker:[^:]+:\d+:pipeline/([^/]+)/execution/([^/]+)", arn)
    if not match:
        raise UsageError(f"{arn}: not a pipeline execution ARN (arn:aws:sagemaker:<region>:<account>:pipeline/"
                         "<name>/execution/<id>); pass one printed by `start`, or an execution id")
    return match.group(1), match.group(2)


def execution_arn(target: Target, spec: Spec, execution: str | None) -> str:
    """An ARN, an execution id (of this spec's pipeline), or None for the latest execution."""
    if execution and execution.startswith("arn:"):
        _split_execution_arn(execution)
        return execution
    deployed = require(target, spec.name)
    if execution:
        if not re.fullmatch(r"[a-z0-9]{1,64}", execution):
            raise UsageError(f"{execution!r}: not an execution id or ARN; `python -m pipeline status` shows the latest")
        return f"{deployed.arn}/execution/{execution}"
    sm = target.client("sagemaker")
    found = call(f"SageMaker list_pipeline_executions {spec.name}", sm.list_pipeline_executions,
                 PipelineName=spec.name, SortBy="CreationTime", SortOrder="Descending", MaxResults=1)
    summaries = found.get("PipelineExecutionSummaries", [])
    if not summaries:
        raise AwsError(f"pipeline {spec.name} has no executions yet; start one: python -m pipeline start")
    return summaries[0]["PipelineExecutionArn"]


@dataclass(frozen=True)
class StepState:
    name: str
    status: str
    reason: str
    training_job: str = ""  # a training step's job name, once it has one


@dataclass(frozen=True)
class HostMetrics:
    """A similarity host's latest value of each metric the training step defines (contract.METRIC_DEFINITIONS)."""

    host: str
    values: dict  # metric name -> latest value
    at: Any = None  # when the latest of them was taken


@dataclass(frozen=True)
class ExecutionState:
    arn: str
    status: str
    reason: str
    steps: tuple[StepState, ...]
    steps_unavailable: str = ""  # why the steps could not be listed (the execution's state still shows)
    metrics: tuple[HostMetrics, ...] = ()  # the similarity hosts', when its training job is known
    metrics_note: str = ""  # why there are none (yet)

    def lines(self) -> list[str]:
        head = f"{self.arn}: {self.status}" + (f" ({self.reason})" if self.reason else "")
        width = max((len(s.name) for s in self.steps), default=0)
        lines = [head]
        for s in self.steps:
            lines.append(f"  {s.name:<{width}}  {s.status}" + (f": {s.reason}" if s.reason else ""))
            if s.training_job:
                lines += [f"    {m.host}: {metric_text(m)}" for m in self.metrics]
                lines += [f"    metrics: {self.metrics_note}"] if self.metrics_note else []
        return lines + ([f"  steps unavailable: {self.steps_unavailable}"] if self.steps_unavailable else [])


def metric_text(m: HostMetrics) -> str:
    """`progress 37.5% rows 4,608 rows/s 2,210 GFLOP/s 28.3 eta 3 s (at 11:02:05 UTC)`, what the host had said."""
    shown = {"progress_percent": "progress {:.1f}%", "rows_done": "rows {:,.0f}", "rows_per_second": "rows/s {:,.0f}",
             "gflops": "GFLOP/s {:.1f}", "eta_seconds": "eta {:,.0f} s"}
    parts = [shown.get(name, name + " {:g}").format(m.values[name]) for name, _ in METRIC_DEFINITIONS if name in m.values]
    import datetime

    at = f" (at {m.at.astimezone(datetime.timezone.utc):%H:%M:%S} UTC)" if m.at else ""
    return " ".join(parts) + at


def status(target: Target, arn: str) -> ExecutionState:
    """The execution, its steps and, once the Similarity step's training job exists, its hosts' latest metrics."""
    sm = target.client("sagemaker")
    found = call(f"SageMaker describe_pipeline_execution {arn}", sm.describe_pipeline_execution,
                 PipelineExecutionArn=arn)
    try:
        steps, unavailable = tuple(_steps(sm, arn)), ""
    except AwsError as exc:  # e.g. no sagemaker:ListPipelineExecutionSteps permission: still show the state
        steps, unavailable = (), str(exc)
    job = next((s.training_job for s in steps if s.training_job), "")
    metrics, note = training_metrics(target, job) if job else ((), "")
    return ExecutionState(arn, found["PipelineExecutionStatus"], found.get("FailureReason", ""), steps, unavailable,
                          metrics, note)


METRICS_PERIOD = 60  # seconds: SageMaker publishes training metrics to CloudWatch at about this resolution
MAX_QUERIES = 500  # GetMetricData's queries per call


def training_metrics(target: Target, job: str) -> tuple[tuple[HostMetrics, ...], str]:
    """Each host's latest metric values from CloudWatch (namespace /aws/sagemaker/TrainingJobs, dimension Host =
    <job>/algo-N), or () and why there are none: not running yet, nothing published yet (CloudWatch gets them
    about once a minute, and not at all for a job that ends sooner), or the call refused."""
    import datetime

    try:
        described = call(f"SageMaker describe_training_job {job}", target.client("sagemaker").describe_training_job,
                         TrainingJobName=job)
        hosts = int((described.get("ResourceConfig") or {}).get("InstanceCount") or 1)
        began = described.get("TrainingStartTime") or described.get("CreationTime")
        now = datetime.datetime.now(datetime.timezone.utc)
        queries = [{"Id": f"m{h}_{i}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": METRICS_NAMESPACE, "MetricName": name,
                       "Dimensions": [{"Name": "Host", "Value": f"{job}/algo-{h}"}]},
            "Period": METRICS_PERIOD, "Stat": "Maximum"}}
            for h in range(1, hosts + 1) for i, (name, _) in enumerate(METRIC_DEFINITIONS)]
        latest: dict[tuple[int, int], tuple[Any, float]] = {}
        cloudwatch = target.client("cloudwatch")
        for first in range(0, len(queries), MAX_QUERIES):
            token = None
            while True:
                page = call("CloudWatch get_metric_data", cloudwatch.get_metric_data,
                            MetricDataQueries=queries[first:first + MAX_QUERIES], ScanBy="TimestampDescending",
                            StartTime=(began or now - datetime.timedelta(days=1)) - datetime.timedelta(minutes=5),
                            EndTime=now + datetime.timedelta(minutes=1), **({"NextToken": token} if token else {}))
                for result in page.get("MetricDataResults", []):
                    h, i = (int(x) for x in result["Id"][1:].split("_"))
                    for at, value in zip(result.get("Timestamps", []), result.get("Values", [])):
                        if (h, i) not in latest or at > latest[(h, i)][0]:
                            latest[(h, i)] = (at, value)
                token = page.get("NextToken")
                if not token:
                    break
    except AwsError as exc:
        return (), f"unavailable: {exc}"
    metrics = []
    for h in range(1, hosts + 1):
        mine = {METRIC_DEFINITIONS[i][0]: latest[(h, i)] for i in range(len(METRIC_DEFINITIONS)) if (h, i) in latest}
        if mine:
            metrics.append(HostMetrics(f"algo-{h}", {name: value for name, (_, value) in mine.items()},
                                       max(at for at, _ in mine.values())))
    if metrics:
        return tuple(metrics), ""
    state = described.get("SecondaryStatus") or described.get("TrainingJobStatus")
    return (), (f"none yet for {job} ({state}): SageMaker sends the hosts' progress lines to CloudWatch about once a "
                "minute while they run")


def _steps(sm: Any, arn: str) -> list[StepState]:
    steps: list[StepState] = []
    token = None
    while True:  # paged; run order (Ascending)
        kwargs = {"PipelineExecutionArn": arn, "SortOrder": "Ascending", **({"NextToken": token} if token else {})}
        page = call("SageMaker list_pipeline_execution_steps", sm.list_pipeline_execution_steps, **kwargs)
        steps += [StepState(s.get("StepDisplayName") or s["StepName"], s.get("StepStatus", "?"),
                            s.get("FailureReason", ""), _training_job(s)) for s in page.get("PipelineExecutionSteps", [])]
        token = page.get("NextToken")
        if not token:
            return steps


def _training_job(step: dict) -> str:
    """The training job's name from a listed step's Metadata.TrainingJob.Arn (arn:...:training-job/<name>)."""
    arn = ((step.get("Metadata") or {}).get("TrainingJob") or {}).get("Arn") or ""
    return arn.rsplit("/", 1)[-1] if arn else ""


def watch(target: Target, arn: str, show: Callable[[ExecutionState], None], interval: float = 15.0,
          sleep: Callable[[float], None] = time.sleep) -> str:
    """Show the execution's state, its steps and its hosts' metrics every `interval` seconds until it ends;
    returns its final status."""
    while True:
        state = status(target, arn)
        show(state)
        if state.status in TERMINAL:
            return state.status
        sleep(interval)


def wait(target: Target, arn: str, say: Say, poll: float = 5.0, max_poll: float = 30.0,
         timeout: float | None = None, sleep: Callable[[float], None] = time.sleep) -> str:
    """Follow an execution to its end (polling every 5 s, backing off to 30 s); returns its final status."""
    sm = target.client("sagemaker")
    began, last, interval = time.monotonic(), None, poll
    while True:
        state = call(f"SageMaker describe_pipeline_execution {arn}", sm.describe_pipeline_execution,
                     PipelineExecutionArn=arn)["PipelineExecutionStatus"]
        if state != last:
            say(f"{time.strftime('%H:%M:%S')} {state}")
            last = state
        if state in TERMINAL:
            return state
        if timeout is not None and time.monotonic() - began > timeout:
            raise AwsError(f"{arn}: still {state} after {timeout:g} s; follow it with `python -m pipeline status`")
        sleep(interval)
        interval = min(max_poll, interval * 1.5)


# ---------------------------------------------------------------------------------------------------------
# Model Registry: the artifact versions Register recorded (python -m pipeline registry --cloud, neighbors ARN)

MODEL_PACKAGE_ARN = re.compile(r"arn:aws[a-z\-]*:sagemaker:(?P<region>[a-z0-9\-]+):\d{12}:model-package/"
                               r"(?P<group>[^/]+)/(?P<version>\d+)")


def registry_entry(described: dict) -> dict:
    """A model package as the local registry lists its entries (the same keys, so both print alike)."""
    created = described.get("CreationTime")
    return {
        "model_package_group": described.get("ModelPackageGroupName"),
        "version": described.get("ModelPackageVersion"),
        "model_package_arn": described["ModelPackageArn"],
        "approval_status": described.get("ModelApprovalStatus"),
        "description": described.get("ModelPackageDescription", ""),
        "metadata": described.get("CustomerMetadataProperties", {}),
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(created, "strftime") else created,
    }


def model_packages(target: Target, group: str) -> list[dict]:
    """The versions of a model package group, oldest first (ListModelPackages gives no metadata: `show` does)."""
    sm = target.client("sagemaker")
    found, token = [], None
    while True:
        page = call(f"SageMaker list_model_packages {group}", sm.list_model_packages, ModelPackageGroupName=group,
                    SortBy="CreationTime", SortOrder="Ascending", **({"NextToken": token} if token else {}))
        found += [registry_entry(s) for s in page.get("ModelPackageSummaryList", [])]
        token = page.get("NextToken")
        if not token:
            return found


def model_package(target: Target, arn: str) -> dict:
    sm = target.client("sagemaker")
    return registry_entry(call(f"SageMaker describe_model_package {arn}", sm.describe_model_package,
                               ModelPackageName=arn))


def set_approval(target: Target, arn: str, approval_status: str) -> dict:
    """Approve or reject a version (what deployment automation watches); returns the entry as it is now."""
    sm = target.client("sagemaker")
    call(f"SageMaker update_model_package {arn}", sm.update_model_package, ModelPackageArn=arn,
         ModelApprovalStatus=approval_status)
    return model_package(target, arn)


def model_package_by_arn(arn: str, session: Any = None) -> dict:
    """A model package named by its ARN alone (its region is in it): how `allpairs.open(arn)` finds the artifact."""
    import boto3

    match = MODEL_PACKAGE_ARN.fullmatch(arn)
    if not match:
        raise UsageError(f"{arn}: not a model package ARN (arn:aws:sagemaker:<region>:<account>:model-package/"
                         "<group>/<version>)")
    quiet()
    session = session or boto3.Session()
    return model_package(Target(session, match.group("region"), ""), arn)
