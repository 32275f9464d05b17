"""`python -m pipeline status [--watch]`: a cloud execution's steps and its similarity hosts' latest metrics (from
CloudWatch, as the training step's metric definitions publish them), degrading to a clear line when they cannot
be had. moto runs the AWS side in process; it lacks ListPipelineExecutionSteps, which is stubbed."""
from __future__ import annotations

import datetime
import io

import boto3
import botocore.client
import pytest
from botocore.exceptions import ClientError

from pipeline import api, aws
from pipeline.display import StatusDisplay
from pipeline.spec import load_spec
from steps.contract import METRICS_NAMESPACE
from tests.test_aws import aws_env, compiled_real, moto  # noqa: F401 - fixtures

JOB = "allpairs-similarity-abc123"


def stub(monkeypatch, steps: list[dict], refuse: set[str] = frozenset(), states: list[str] | None = None) -> None:
    """ListPipelineExecutionSteps answers `steps`; operations in `refuse` are denied; DescribePipelineExecution
    answers `states` one after the other, if given."""
    original = botocore.client.BaseClient._make_api_call

    def call(client, operation, params):
        if operation in refuse:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, operation)
        if operation == "ListPipelineExecutionSteps":
            return {"PipelineExecutionSteps": steps}
        if operation == "DescribePipelineExecution" and states:
            return {"PipelineExecutionStatus": states.pop(0) if len(states) > 1 else states[0]}
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", call)


@pytest.fixture
def started(moto, compiled_real):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    aws.upsert(target, spec, text)
    _, arn, _ = api.start(path, [])
    boto3.client("sagemaker", region_name="us-east-1").create_training_job(
        TrainingJobName=JOB, AlgorithmSpecification={"TrainingImage": "image", "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::111122223333:role/r", OutputDataConfig={"S3OutputPath": "s3://b/o"},
        ResourceConfig={"InstanceType": "ml.c5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 600})
    return target, arn


STEPS = [{"StepName": "Preprocess", "StepStatus": "Succeeded"},
         {"StepName": "Similarity", "StepStatus": "Executing",
          "Metadata": {"TrainingJob": {"Arn": f"arn:aws:sagemaker:us-east-1:111122223333:training-job/{JOB}"}}}]


def publish(host: str, values: dict, at: datetime.datetime) -> None:
    """What SageMaker puts in CloudWatch from a host's progress lines."""
    boto3.client("cloudwatch", region_name="us-east-1").put_metric_data(Namespace=METRICS_NAMESPACE, MetricData=[
        {"MetricName": name, "Dimensions": [{"Name": "Host", "Value": f"{JOB}/{host}"}], "Value": value,
         "Timestamp": at} for name, value in values.items()])


def test_status_shows_each_similarity_hosts_latest_metrics(started, monkeypatch):
    target, arn = started
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    earlier = now - datetime.timedelta(minutes=2)
    publish("algo-1", {"progress_percent": 12.5, "rows_done": 1536, "rows_per_second": 800, "gflops": 10.2,
                       "eta_seconds": 50}, earlier)
    publish("algo-1", {"progress_percent": 37.5, "rows_done": 4608, "rows_per_second": 2210, "gflops": 28.3,
                       "eta_seconds": 3}, now)
    publish("algo-2", {"progress_percent": 20.0}, earlier)
    stub(monkeypatch, STEPS)
    assert aws.status(target, arn).lines() == [
        f"{arn}: Succeeded",
        "  Preprocess  Succeeded",
        "  Similarity  Executing",
        f"    algo-1: progress 37.5% rows 4,608 rows/s 2,210 GFLOP/s 28.3 eta 3 s (at {now:%H:%M:%S} UTC)",
        f"    algo-2: progress 20.0% (at {earlier:%H:%M:%S} UTC)",
    ]


def test_without_metrics_yet_or_without_permission_a_clear_line(started, monkeypatch):
    target, arn = started
    stub(monkeypatch, STEPS)
    assert aws.status(target, arn).lines()[-1] == (
        f"    metrics: none yet for {JOB} (Completed): SageMaker sends the hosts' progress lines to CloudWatch about "
        "once a minute while they run")
    stub(monkeypatch, STEPS, refuse={"GetMetricData"})
    assert aws.status(target, arn).lines()[-1] == (
        "    metrics: unavailable: CloudWatch get_metric_data: AccessDeniedException: not allowed; your AWS identity "
        "needs this permission; ask your administrator")
    stub(monkeypatch, STEPS[:1])  # before the training job exists: no metrics line at all
    assert aws.status(target, arn).lines() == [f"{arn}: Succeeded", "  Preprocess  Succeeded"]


def test_watch_follows_the_execution_to_its_end(started, monkeypatch):
    target, arn = started
    stub(monkeypatch, STEPS, states=["Executing", "Executing", "Succeeded"])
    seen, slept = [], []
    assert aws.watch(target, arn, lambda state: seen.append(state.status), interval=7, sleep=slept.append) == "Succeeded"
    assert seen == ["Executing", "Executing", "Succeeded"] and slept == [7, 7]
    shown = StatusDisplay(stream=io.StringIO(), live=False)
    with shown:
        for lines in (["a: Executing"], ["a: Executing"], ["a: Succeeded"]):
            shown.show(lines)
    printed = shown.stream.getvalue().splitlines()
    assert [line for line in printed if not line.startswith("--- ")] == ["a: Executing", "a: Succeeded"]  # changes only
