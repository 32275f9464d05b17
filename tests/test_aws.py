"""upsert, diff, start, status against moto (in process), and once through the real CLI against a moto server.

moto 5.2.5 does not implement ListPipelineExecutionSteps: the tests that show steps stub that one call only
(`stub_list_steps`), everything else goes to moto. Executions in moto are Succeeded as soon as they start.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.client
import pytest
from moto import mock_aws

from pipeline import api, aws
from pipeline.cli import main
from pipeline.compile import compile_definition
from pipeline.errors import AwsError, CompileError, UsageError
from pipeline.definition.parameters import parse_param_args
from pipeline.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "111122223333"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/allpairs@sha256:{'a' * 64}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/AllpairsSageMakerRole"
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                  "Principal": {"Service": "sagemaker.amazonaws.com"}}]}


def real_spec_text(**edits: str) -> str:
    text = (REPO / "pipeline.yaml").read_text()
    text = text.replace("123456789012.dkr.ecr.us-east-1.amazonaws.com/allpairs:latest", IMAGE, 1)
    text = text.replace("arn:aws:iam::123456789012:role/AllpairsSageMakerRole", ROLE, 1)
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials, no user AWS files, no region from the environment (the spec's applies)."""
    for var in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def moto(aws_env):
    with mock_aws():
        boto3.client("iam", region_name="us-east-1").create_role(
            RoleName="AllpairsSageMakerRole", AssumeRolePolicyDocument=json.dumps(TRUST))
        yield


@pytest.fixture(scope="module")
def compiled_real(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    path.write_text(real_spec_text())
    return path, compile_definition(load_spec(path))


def write_spec(tmp_path: Path, **edits: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(real_spec_text(**edits))
    return path


class CallRecorder:
    """Records every AWS operation name (and lets them through)."""

    def __init__(self, monkeypatch):
        self.operations: list[str] = []
        original = botocore.client.BaseClient._make_api_call

        def record(client, operation, params):
            self.operations.append(operation)
            return original(client, operation, params)

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)


def stub_list_steps(monkeypatch, steps: list[dict]) -> None:
    """moto lacks ListPipelineExecutionSteps: stub that operation only."""
    original = botocore.client.BaseClient._make_api_call

    def call(client, operation, params):
        if operation == "ListPipelineExecutionSteps":
            return {"PipelineExecutionSteps": steps}
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", call)


# ---------------------------------------------------------------------------------------------------------
# Credentials, region, role, placeholder


def test_no_credentials(aws_env, monkeypatch, compiled_real):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AwsError) as info:
        aws.connect(load_spec(compiled_real[0]))
    assert str(info.value) == ("no AWS credentials found; run `aws configure` or `aws sso login`, or set AWS_PROFILE "
                               "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")


def test_unknown_profile(aws_env, compiled_real):
    with pytest.raises(AwsError) as info:
        aws.connect(load_spec(compiled_real[0]), profile="nope")
    assert str(info.value) == "AWS profile 'nope' not found; pick one from ~/.aws/config or unset AWS_PROFILE"


def test_missing_region_and_role(aws_env, compiled_real):
    spec = load_spec(compiled_real[0])
    with pytest.raises(AwsError) as info:
        aws.connect(dataclasses.replace(spec, region=""))
    assert str(info.value) == (f"{spec.where('region')}: no AWS region: set region in the spec, pass --region or "
                               "set AWS_REGION")
    with pytest.raises(AwsError) as info:
        aws.connect(dataclasses.replace(spec, role_arn=""))
    assert str(info.value) == (f"{spec.where('role_arn')}: no IAM role for the pipeline: set role_arn in the spec "
                               "or pass --role-arn")


def test_region_and_role_precedence(aws_env, monkeypatch, compiled_real):
    spec = load_spec(compiled_real[0])
    assert (aws.connect(spec).region, aws.connect(spec).role_arn) == ("us-east-1", ROLE)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert aws.connect(spec).region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert aws.connect(spec).region == "eu-central-1"
    other = "arn:aws:iam::111122223333:role/Other"
    assert aws.connect(spec, region="ap-south-1", role_arn=other).region == "ap-south-1"
    assert aws.connect(spec, role_arn=other).role_arn == other


def test_upsert_refuses_the_placeholder_image_before_any_call(aws_env, monkeypatch, capsys):
    (Path.cwd() / "pipeline.yaml").write_text((REPO / "pipeline.yaml").read_text())
    recorder = CallRecorder(monkeypatch)
    assert main(["upsert"]) == 2
    assert capsys.readouterr().err == (
        "error: pipeline.yaml:12: image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/allpairs:latest is the "
        "placeholder (account 123456789012); build and push the real one with `python -m pipeline image build && "
        "python -m pipeline image push` and put the printed URI in image\n"
    )
    assert recorder.operations == []


def test_upsert_refuses_the_placeholder_role(aws_env, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(real_spec_text().replace(ROLE, "arn:aws:iam::123456789012:role/AllpairsSageMakerRole"))
    spec = load_spec(path)
    with pytest.raises(UsageError) as info:
        aws.check_publishable(spec, spec.role_arn)
    assert str(info.value) == (
        f"{spec.where('role_arn')}: role_arn: arn:aws:iam::123456789012:role/AllpairsSageMakerRole is the "
        "placeholder (account 123456789012); set role_arn to your SageMaker execution role or pass --role-arn"
    )


def test_mutable_tag_note():
    assert aws.mutable_tag_note(IMAGE) is None
    assert aws.mutable_tag_note("1.dkr.ecr.us-east-1.amazonaws.com/allpairs:0.1.0") is None
    assert aws.mutable_tag_note("1.dkr.ecr.us-east-1.amazonaws.com/allpairs") == (
        "note: image is named by the tag 'latest': each job runs whatever it points to then; pin the digest that "
        "`python -m pipeline image push` prints"
    )


def test_missing_role_and_untrusting_role(moto, compiled_real):
    path, text = compiled_real
    spec = load_spec(path)
    missing = "arn:aws:iam::111122223333:role/Nobody"
    with pytest.raises(AwsError) as info:
        aws.upsert(aws.connect(spec, role_arn=missing), spec, text)
    assert str(info.value) == (f"role {missing} does not exist; create it (trusting sagemaker.amazonaws.com) or pass "
                               "--role-arn with an existing SageMaker execution role")
    lambda_trust = json.dumps({**TRUST, "Statement": [{**TRUST["Statement"][0],
                                                       "Principal": {"Service": "lambda.amazonaws.com"}}]})
    boto3.client("iam", region_name="us-east-1").create_role(RoleName="Lambda", AssumeRolePolicyDocument=lambda_trust)
    lambda_role = "arn:aws:iam::111122223333:role/Lambda"
    with pytest.raises(AwsError) as info:
        aws.upsert(aws.connect(spec, role_arn=lambda_role), spec, text)
    assert str(info.value) == (f"role {lambda_role} does not trust sagemaker.amazonaws.com; add it to the role's "
                               "trust policy or pass --role-arn with a SageMaker execution role")


# ---------------------------------------------------------------------------------------------------------
# upsert and diff


def test_upsert_creates_then_reports_unchanged_then_updates_with_tags(moto, compiled_real, tmp_path):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    arn, summary = aws.upsert(target, spec, text)
    assert (arn, summary) == (f"arn:aws:sagemaker:us-east-1:123456789012:pipeline/{spec.name}", "created")
    sm = boto3.client("sagemaker", region_name="us-east-1")
    described = sm.describe_pipeline(PipelineName=spec.name)
    assert described["PipelineDefinition"] == text and described["RoleArn"] == ROLE
    assert aws.upsert(target, spec, text) == (arn, "unchanged")

    edited = write_spec(tmp_path, **{"  TopK: 10 ": "  TopK: 20 ", "  MinScore: -1.0 ": "  MinScore: 0.5 ",
                                     "tags: {}": "tags: {team: search}", "  volume_gb: 30\n  max_runtime_seconds: 86400":
                                     "  volume_gb: 60\n  max_runtime_seconds: 86400"})
    spec2 = load_spec(edited)
    text2 = compile_definition(spec2)
    assert aws.upsert(target, spec2, text2) == (
        arn, "updated: 2 parameters changed (TopK, MinScore), 4 steps changed (Preprocess, Similarity, Merge, Register), "
        "1 tag set")  # the tag reaches every job, so every step changed
    assert sm.describe_pipeline(PipelineName=spec.name)["PipelineDefinition"] == text2
    assert {"Key": "team", "Value": "search"} in sm.list_tags(ResourceArn=arn)["Tags"]
    assert aws.upsert(target, spec2, text2) == (arn, "unchanged")


def test_create_sends_the_spec_tags(moto, tmp_path):
    spec = load_spec(write_spec(tmp_path, **{"tags: {}": "tags: {team: search, env: prod}"}))
    arn, _ = aws.upsert(aws.connect(spec), spec, compile_definition(spec))
    tags = boto3.client("sagemaker", region_name="us-east-1").list_tags(ResourceArn=arn)["Tags"]
    assert {(t["Key"], t["Value"]) for t in tags} >= {("team", "search"), ("env", "prod")}


def test_diff_before_and_after_upsert(moto, compiled_real, tmp_path):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    with pytest.raises(AwsError) as info:
        aws.diff(target, spec, text)
    assert str(info.value) == (f"pipeline {spec.name} not found in us-east-1; publish it first: python -m pipeline "
                               "upsert (or pass --region where it lives)")
    aws.upsert(target, spec, text)
    assert aws.diff(target, spec, text) == []
    edited = load_spec(write_spec(tmp_path, **{"  TopK: 10 ": "  TopK: 20 ", "  chunk_rows: 65536": "  chunk_rows: 1000",
                                               "  instance_type: ml.m5.xlarge": "  instance_type: ml.m5.2xlarge"}))
    lines = aws.diff(aws.connect(edited, role_arn="arn:aws:iam::111122223333:role/Other"), edited,
                     compile_definition(edited))
    assert lines == [
        "~ parameter TopK: default 10 -> 20",
        "~ Preprocess: instance type: ml.m5.xlarge -> ml.m5.2xlarge",
        "~ Preprocess: arguments: Join('', [--input-uri=, Parameters.InputData]) --non-finite=error "
        "--chunk-rows=65536 --memory-budget-mb=512 -> Join('', [--input-uri=, Parameters.InputData]) "
        "--non-finite=error --chunk-rows=1000 --memory-budget-mb=512",
        f"~ role: {ROLE} -> arn:aws:iam::111122223333:role/Other",
    ]


def test_diff_exits_1_on_a_difference_and_0_on_none_as_git_diff_exit_code(moto, tmp_path, capsys):
    path = write_spec(tmp_path)
    assert main(["diff", "--spec", str(path)]) == 1  # nothing deployed: an error, and never "no difference"
    assert capsys.readouterr().err == ("error: pipeline allpairs-similarity not found in us-east-1; publish it first: "
                                       "python -m pipeline upsert (or pass --region where it lives)\n")
    assert main(["upsert", "--spec", str(path)]) == 0
    capsys.readouterr()
    assert main(["diff", "--spec", str(path)]) == 0
    assert capsys.readouterr().out == "no differences: the deployed allpairs-similarity is this spec's definition\n"
    edited = write_spec(tmp_path, **{"  TopK: 10 ": "  TopK: 20 "})
    assert main(["diff", "--spec", str(edited)]) == 1
    assert capsys.readouterr().out == "~ parameter TopK: default 10 -> 20\n"


def test_diff_shows_images_counts_and_added_settings():
    from pipeline.definition.diff import changed_summary, definition_diff

    old = {"Parameters": [{"Name": "N", "Type": "Integer", "DefaultValue": 2}], "Steps": [
        {"Name": "S", "Type": "Training", "Arguments": {
            "AlgorithmSpecification": {"TrainingImage": "a:1"}, "ResourceConfig": {"InstanceCount": {"Get": "Parameters.N"}},
            "HyperParameters": {"k": "5"}}}]}
    new = json.loads(json.dumps(old))
    new["Parameters"].append({"Name": "M", "Type": "String", "DefaultValue": "x"})
    args = new["Steps"][0]["Arguments"]
    args["AlgorithmSpecification"]["TrainingImage"] = "a:2"
    args["ResourceConfig"]["InstanceCount"] = 4
    args["HyperParameters"]["k"] = {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.M"}]}}
    args["EnableManagedSpotTraining"] = True
    new["Steps"].append({"Name": "T", "Type": "Processing", "Arguments": {}})
    assert definition_diff(json.dumps(old), json.dumps(new)) == [
        "+ parameter M: String, default x",
        "~ S: image: a:1 -> a:2",
        "~ S: instance count: Parameters.N -> 4",
        "~ S: HyperParameters.k: 5 -> Join('', [Parameters.M])",
        "+ S: EnableManagedSpotTraining: true",
        "+ step T (Processing)",
    ]
    assert changed_summary(json.dumps(old), json.dumps(new)) == ["1 parameter changed (M)", "2 steps changed (S, T)"]


# ---------------------------------------------------------------------------------------------------------
# start, wait, status


def test_start_checks_parameters_before_any_call(moto, compiled_real, monkeypatch):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    recorder = CallRecorder(monkeypatch)
    cases = [
        (["TopK=ten"], '--param TopK=ten: TopK is an Integer parameter and "ten" is not an integer (for example TopK=10)'),
        (["Topk=5"], '--param Topk=5: unknown parameter "Topk" (did you mean "TopK"?); parameters: ApprovalStatus, '
                     "InputData, InstanceCount, InstanceType, MinScore, ModelPackageGroup, OutputPrefix, TopK"),
        (["ApprovalStatus=Yes"], '--param ApprovalStatus=Yes: "Yes" is not an allowed value of ApprovalStatus; '
                                 "allowed: PendingManualApproval, Approved, Rejected"),
        (["TopK=0"], "--param TopK=0: TopK must be an integer between 1 and 100000, got 0 (the number of neighbours "
                     "kept per row); pass --param TopK=<value> within that range"),
        (["InputData=data/x.npy"], "--param InputData=data/x.npy: InputData must be an s3:// URI, got 'data/x.npy'; "
                                   "pass --param InputData=<value> of that form"),
        (["InputData=s3://bkt/" + "x" * 298], "--param InputData=s3://bkt/" + "x" * 298 + ": step Preprocess passes the "
         "value of InputData in AppSpecification.ContainerArguments[0]: 319 characters where SageMaker allows 256; "
         "use a shorter value"),
    ]
    for params, message in cases:
        with pytest.raises((UsageError, CompileError)) as info:  # both exit 2
            api.start(path, params)
        assert str(info.value) == message and info.value.exit_code == 2
    assert recorder.operations == []


def test_start_when_not_deployed(moto, compiled_real):
    path, text = compiled_real
    spec = load_spec(path)
    with pytest.raises(AwsError) as info:
        api.start(path, [])
    assert str(info.value).startswith(f"pipeline {spec.name} not found in us-east-1; publish it first")


def test_start_checks_against_the_deployed_definition_too(moto, compiled_real, tmp_path):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    aws.upsert(target, spec, text)
    newer = write_spec(tmp_path, **{"instance_types: [ml.c5.2xlarge,": "instance_types: [ml.c5.xlarge, ml.c5.2xlarge,"})
    with pytest.raises(UsageError) as info:
        api.start(newer, ["InstanceType=ml.c5.xlarge"])
    assert str(info.value) == (
        '--param InstanceType=ml.c5.xlarge: "ml.c5.xlarge" is not an allowed value of InstanceType; allowed: '
        "ml.c5.2xlarge, ml.c5.4xlarge, ml.c5.9xlarge, ml.m5.4xlarge (in the deployed pipeline allpairs-similarity: "
        "run `python -m pipeline upsert` first)"
    )


def test_start_sends_only_the_overrides_and_wait_follows_it(moto, compiled_real):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    aws.upsert(target, spec, text)
    _, arn, link = api.start(path, ["TopK=25", "MinScore=0.5"])
    assert arn.startswith(f"arn:aws:sagemaker:us-east-1:123456789012:pipeline/{spec.name}/execution/")
    assert link == "https://us-east-1.console.aws.amazon.com/sagemaker/home?region=us-east-1#/pipelines"
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sent = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert sorted((p["Name"], p["Value"]) for p in sent) == [("MinScore", "0.5"), ("TopK", "25")]
    said: list[str] = []
    assert aws.wait(target, arn, said.append, sleep=lambda s: pytest.fail("moto executions end at once")) == "Succeeded"
    assert len(said) == 1 and said[0].endswith(" Succeeded")


def test_studio_link_uses_the_domain(moto, compiled_real, monkeypatch):
    target = aws.connect(load_spec(compiled_real[0]))
    original = botocore.client.BaseClient._make_api_call
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", lambda c, op, p: (
        {"Domains": [{"DomainId": "d-abc123", "Status": "InService"}]} if op == "ListDomains" else original(c, op, p)))
    arn = "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p-1/execution/x9y8"
    assert aws.studio_link(target, arn) == (
        "https://studio-d-abc123.studio.us-east-1.sagemaker.aws/pipelines/p-1/executions/x9y8/graph")


class FakeSageMaker:
    def __init__(self, states):
        self.states = list(states)

    def describe_pipeline_execution(self, PipelineExecutionArn):
        return {"PipelineExecutionStatus": self.states.pop(0) if len(self.states) > 1 else self.states[0]}


def test_wait_backs_off_to_a_bounded_interval_and_times_out():
    fake = FakeSageMaker(["Executing"] * 6 + ["Failed"])
    target = aws.Target(session=None, region="us-east-1", role_arn=ROLE)
    object.__setattr__(target, "client", lambda service: fake)
    slept: list[float] = []
    said: list[str] = []
    assert aws.wait(target, "arn", said.append, sleep=slept.append) == "Failed"
    assert slept == [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0]
    assert [s.split(" ", 1)[1] for s in said] == ["Executing", "Failed"]
    fake = FakeSageMaker(["Executing"])
    object.__setattr__(target, "client", lambda service: fake)
    with pytest.raises(AwsError) as info:
        aws.wait(target, "arn", said.append, timeout=0, sleep=slept.append)
    assert str(info.value) == "arn: still Executing after 0 s; follow it with `python -m pipeline status`"


def test_status_shows_steps_and_failure_reasons(moto, compiled_real, monkeypatch):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    aws.upsert(target, spec, text)
    _, arn, _ = api.start(path, [])
    stub_list_steps(monkeypatch, [
        {"StepName": "Preprocess", "StepDisplayName": "Preprocess", "StepStatus": "Succeeded"},
        {"StepName": "Similarity", "StepStatus": "Failed",
         "FailureReason": "AlgorithmError: MinScore=2.0: cosine scores lie in [-1, 1]"},
    ])
    assert aws.execution_arn(target, spec, None) == arn  # the latest execution
    assert aws.execution_arn(target, spec, arn.rsplit("/", 1)[1]) == arn  # an id
    assert aws.status(target, arn).lines() == [
        f"{arn}: Succeeded",
        "  Preprocess  Succeeded",
        "  Similarity  Failed: AlgorithmError: MinScore=2.0: cosine scores lie in [-1, 1]",
    ]


def test_status_without_executions_and_with_a_bad_id(moto, compiled_real):
    path, text = compiled_real
    spec = load_spec(path)
    target = aws.connect(spec)
    aws.upsert(target, spec, text)
    with pytest.raises(AwsError) as info:
        aws.execution_arn(target, spec, None)
    assert str(info.value) == f"pipeline {spec.name} has no executions yet; start one: python -m pipeline start"
    with pytest.raises(UsageError) as info:
        aws.execution_arn(target, spec, "Not An Id")
    assert str(info.value) == "'Not An Id': not an execution id or ARN; `python -m pipeline status` shows the latest"


# ---------------------------------------------------------------------------------------------------------
# The real CLI, as a subprocess, against a moto server on 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server(aws_env):
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("moto_server did not start within 30 s")
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_cli_upsert_start_wait_status_through_a_moto_server(moto_server, tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_server}
    boto3.client("iam", region_name="us-east-1", endpoint_url=moto_server).create_role(
        RoleName="AllpairsSageMakerRole", AssumeRolePolicyDocument=json.dumps(TRUST))
    write_spec(tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=180)

    pipeline_arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/allpairs-similarity"
    done = cli("upsert")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{pipeline_arn}\ncreated\n", "")
    done = cli("upsert")
    assert (done.returncode, done.stdout) == (0, f"{pipeline_arn}\nunchanged\n")
    done = cli("diff")
    assert (done.returncode, done.stdout) == (0, "no differences: the deployed allpairs-similarity is this spec's "
                                                 "definition\n")
    done = cli("start", "--param", "TopK=ten")
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", 'error: --param TopK=ten: TopK is an Integer parameter and "ten" is not an integer (for example '
               "TopK=10)\n")
    done = cli("start", "--param", "TopK=20", "--wait")
    assert done.returncode == 0, done.stderr
    arn, link, head, *steps = done.stdout.splitlines()
    assert arn.startswith(f"{pipeline_arn}/execution/") and link.startswith("https://us-east-1.console.aws")
    assert head == f"{arn}: Succeeded"
    # The moto server has no ListPipelineExecutionSteps: status still shows the execution, and says why not steps.
    assert steps == ["  steps unavailable: SageMaker list_pipeline_execution_steps: HTTP 500: the service failed; "
                     "retry later"]
    assert done.stderr.strip().endswith("Succeeded")
    done = cli("status")
    assert done.returncode == 0 and done.stdout.splitlines()[0] == f"{arn}: Succeeded"
    done = cli("status", "--watch", "--interval", "0")  # not a terminal: plain lines; the steps say why they are missing
    stamp, *lines = done.stdout.splitlines()
    assert done.returncode == 0 and stamp.startswith("--- ") and lines == [f"{arn}: Succeeded", *steps]
    recorded = boto3.client("sagemaker", region_name="us-east-1", endpoint_url=moto_server)
    sent = recorded.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert [(p["Name"], p["Value"]) for p in sent] == [("TopK", "20")]
