"""spec -> definition JSON: golden copy, container contract, schema, determinism, zero network calls.

The SDK import costs seconds, so the shipped spec is compiled once per module (under the network guard).
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import botocore.client
import pytest

from pipeline.compile import STEP_NAMES, compile_definition
from pipeline.errors import CompileError
from pipeline.spec import PARAMETER_NAMES, load_spec
from pipeline.spec.parameters import parameters_of
from steps.contract import METRIC_DEFINITIONS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pipeline.yaml"
GOLDEN = Path(__file__).parent / "golden" / "definition.json"
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pipeline-definition.patched.schema.json"
UPDATE_GOLDEN = "ALLPAIRS_UPDATE_GOLDEN"

EXEC_ID = {"Get": "Execution.PipelineExecutionId"}
NORMALIZED = {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['normalized'].S3Output.S3Uri"}


def get(name: str) -> dict:
    return {"Get": f"Parameters.{name}"}


def to_string(name: str) -> dict:
    return {"Std:Join": {"On": "", "Values": [get(name)]}}


def run_uri(leaf: str) -> dict:
    return {"Std:Join": {"On": "/", "Values": [get("OutputPrefix"), EXEC_ID, leaf]}}


def option(name: str, value: dict) -> dict:
    """`--name=<value>` as one container argument: one flat Join (a Join's own values spliced in)."""
    join = value.get("Std:Join")
    parts = [value] if not join else [p for i, v in enumerate(join["Values"]) for p in ([join["On"], v] if i else [v])]
    return {"Std:Join": {"On": "", "Values": [f"--{name}=", *parts]}}


class NetworkGuard:
    """Every AWS API call and every socket connection raises, and is recorded (in case the SDK swallows it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.attempts: list[str] = []

        def refuse(what: str):
            def blocked(*args: Any, **kwargs: Any):
                self.attempts.append(f"{what}{args[1:]!r}")
                raise RuntimeError(f"network call during compile: {what}{args[1:]!r}")

            return blocked

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", refuse("AWS API "))
        monkeypatch.setattr(socket.socket, "connect", refuse("connect "))
        monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex "))
        monkeypatch.setattr(socket, "getaddrinfo", refuse("DNS "))


@pytest.fixture(scope="module")
def compiled() -> tuple[str, list[str]]:
    with pytest.MonkeyPatch.context() as mp:
        guard = NetworkGuard(mp)
        text = compile_definition(load_spec(SHIPPED))
    return text, guard.attempts


@pytest.fixture(scope="module")
def definition(compiled) -> dict:
    return json.loads(compiled[0])


@pytest.fixture(scope="module")
def steps(definition) -> dict[str, dict]:
    return {step["Name"]: step for step in definition["Steps"]}


# ---------------------------------------------------------------------------------------------------------
# Golden copy, determinism, network


def test_definition_matches_the_golden_copy(compiled):
    text = compiled[0]
    if os.environ.get(UPDATE_GOLDEN) == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    golden = GOLDEN.read_text(encoding="utf-8") if GOLDEN.exists() else ""
    if text != golden:
        pretty = lambda s: json.dumps(json.loads(s), indent=1).splitlines() if s else []  # noqa: E731
        diff = "\n".join(difflib.unified_diff(pretty(golden), pretty(text), "golden", "compiled", lineterm=""))
        pytest.fail(
            f"compile_definition(pipeline.yaml) differs from {GOLDEN.relative_to(REPO)}.\n"
            f"If the change is intended, regenerate it on purpose: {UPDATE_GOLDEN}=1 pytest tests/test_compile.py "
            f"and commit the new golden copy.\n{diff}"
        )


def test_compiling_twice_gives_identical_bytes(compiled):
    assert compile_definition(load_spec(SHIPPED)) == compiled[0]


def test_compile_makes_zero_network_calls(compiled, monkeypatch):
    assert compiled[1] == []  # the first compile, which also imported the SDK
    guard = NetworkGuard(monkeypatch)
    compile_definition(load_spec(SHIPPED))
    assert guard.attempts == []


def test_compile_leaves_environment_and_logging_as_it_found_them(compiled, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    try:
        compile_definition(load_spec(SHIPPED))
        assert "SAGEMAKER_VALIDATE_ROLE" not in os.environ
        assert os.environ["AWS_EC2_METADATA_DISABLED"] == "false"
        assert logging.root.manager.disable == logging.NOTSET
        assert logging.getLogger("botocore").level == logging.DEBUG
    finally:
        logging.getLogger("botocore").setLevel(logging.NOTSET)


def test_compile_ignores_aws_profile_and_user_config(compiled, monkeypatch, tmp_path):
    (tmp_path / "config").write_text("[profile other]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert compile_definition(load_spec(SHIPPED)) == compiled[0]


# ---------------------------------------------------------------------------------------------------------
# Parameters


def test_parameters_names_types_defaults_and_enums(definition):
    assert definition["Parameters"] == [
        {"Name": "InputData", "Type": "String", "DefaultValue": "s3://my-bucket/allpairs/input/"},
        {"Name": "OutputPrefix", "Type": "String", "DefaultValue": "s3://my-bucket/allpairs/runs"},
        {"Name": "InstanceCount", "Type": "Integer", "DefaultValue": 2},
        {
            "Name": "InstanceType",
            "Type": "String",
            "DefaultValue": "ml.c5.2xlarge",
            "EnumValues": ["ml.c5.2xlarge", "ml.c5.4xlarge", "ml.c5.9xlarge", "ml.m5.4xlarge"],
        },
        {"Name": "TopK", "Type": "Integer", "DefaultValue": 10},
        {"Name": "MinScore", "Type": "Float", "DefaultValue": -1.0},
        {"Name": "ModelPackageGroup", "Type": "String", "DefaultValue": "allpairs-similarity"},
        {
            "Name": "ApprovalStatus",
            "Type": "String",
            "DefaultValue": "PendingManualApproval",
            "EnumValues": ["PendingManualApproval", "Approved", "Rejected"],
        },
    ]
    assert tuple(p["Name"] for p in definition["Parameters"]) == tuple(p.name for p in parameters_of("all_pairs"))
    assert definition["PipelineExperimentConfig"] is None


def test_every_reference_resolves_to_a_parameter_an_execution_variable_or_an_earlier_step(definition):
    declared = {p["Name"] for p in definition["Parameters"]}
    seen_steps: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if set(node) == {"Get"}:
                kind, _, rest = node["Get"].partition(".")
                if kind == "Parameters":
                    assert rest in declared, node
                elif kind == "Execution":
                    assert rest == "PipelineExecutionId", node
                else:
                    assert kind == "Steps" and rest.split(".")[0] in seen_steps, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for step in definition["Steps"]:
        walk(step)
        seen_steps.append(step["Name"])


# ---------------------------------------------------------------------------------------------------------
# Steps and the container contract


def test_steps_in_order_with_schema_safe_display_names(definition):
    assert [(s["Name"], s["Type"]) for s in definition["Steps"]] == [
        ("Preprocess", "Processing"),
        ("Similarity", "Training"),
        ("Merge", "Processing"),
        ("Register", "Processing"),
    ]
    assert tuple(s["Name"] for s in definition["Steps"]) == STEP_NAMES
    for step in definition["Steps"]:
        assert re.fullmatch(r"[A-Za-z0-9\-_]{1,64}", step["DisplayName"])
        assert step["Description"]


def test_preprocess_step(steps):
    args = steps["Preprocess"]["Arguments"]
    assert args["ProcessingJobName"] == "allpairs-preprocess"
    assert args["AppSpecification"] == {
        "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/allpairs:latest",
        "ContainerEntrypoint": ["python3", "-m", "steps.preprocess"],
        # --name=value: a value starting with "-" stays the option's value (issue 11)
        "ContainerArguments": [option("input-uri", get("InputData")), "--non-finite=error", "--chunk-rows=65536",
                               "--memory-budget-mb=512"],
    }
    assert args["ProcessingResources"] == {
        "ClusterConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    }
    assert args["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert args["RoleArn"] == "arn:aws:iam::123456789012:role/AllpairsSageMakerRole"
    assert args["ProcessingInputs"] == [
        {
            "InputName": "matrix",
            "S3Input": {
                "S3Uri": get("InputData"),
                "LocalPath": "/opt/ml/processing/input/matrix",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
                "S3CompressionType": "None",
            },
        }
    ]
    assert args["ProcessingOutputConfig"] == {
        "Outputs": [
            {
                "OutputName": "normalized",
                "S3Output": {
                    "S3Uri": run_uri("normalized"),
                    "LocalPath": "/opt/ml/processing/output/normalized",
                    "S3UploadMode": "EndOfJob",
                },
            }
        ]
    }


def test_similarity_step(steps):
    args = steps["Similarity"]["Arguments"]
    # No ContainerEntrypoint: SageMaker runs the image as `train`. The hosts' progress lines are its metrics.
    assert args["AlgorithmSpecification"] == {
        "TrainingInputMode": "File",
        "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/allpairs:latest",
        "MetricDefinitions": [{"Name": name, "Regex": regex} for name, regex in METRIC_DEFINITIONS],
    }
    to_string = lambda name: {"Std:Join": {"On": "", "Values": [get(name)]}}  # noqa: E731
    assert args["HyperParameters"] == {
        "top_k": to_string("TopK"),
        "min_score": to_string("MinScore"),
        "memory_budget_mb": "1024",
        "threads": "0",
    }
    assert args["InputDataConfig"] == [
        {
            "ChannelName": "normalized",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": NORMALIZED,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    ]
    assert args["ResourceConfig"] == {
        "InstanceType": get("InstanceType"),
        "InstanceCount": get("InstanceCount"),
        "VolumeSizeInGB": 30,
    }
    assert args["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert args["OutputDataConfig"] == {"S3OutputPath": run_uri("similarity"), "CompressionType": "NONE"}
    assert args["CheckpointConfig"] == {"S3Uri": run_uri("checkpoints"), "LocalPath": "/opt/ml/checkpoints"}
    assert args["RoleArn"] == "arn:aws:iam::123456789012:role/AllpairsSageMakerRole"


def test_every_job_name_carries_the_prefix(steps):
    """ModelTrainer drops TrainingJobName under a PipelineSession (aws/sagemaker-python-sdk#5776); the compiler
    puts it back, so IAM policies on `allpairs-*` match the training job as they match the processing jobs."""
    assert steps["Preprocess"]["Arguments"]["ProcessingJobName"] == "allpairs-preprocess"
    assert steps["Similarity"]["Arguments"]["TrainingJobName"] == "allpairs-similarity"
    assert steps["Merge"]["Arguments"]["ProcessingJobName"] == "allpairs-merge"
    assert steps["Register"]["Arguments"]["ProcessingJobName"] == "allpairs-register"


def test_merge_step(steps):
    args = steps["Merge"]["Arguments"]
    assert args["ProcessingJobName"] == "allpairs-merge"
    app = args["AppSpecification"]
    assert app["ContainerEntrypoint"] == ["python3", "-m", "steps.merge"]
    records = []
    for name in (p.name for p in parameters_of("all_pairs")):
        records += [{"Std:Join": {"On": "", "Values": [f"--parameter={name}=", get(name)]}}]
    assert app["ContainerArguments"] == [
        option("execution-id", EXEC_ID),
        option("artifact-uri", run_uri("artifact")),
        *records,
    ]  # fmt: skip
    common = {"S3DataType": "S3Prefix", "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated",
              "S3CompressionType": "None"}  # fmt: skip
    assert args["ProcessingInputs"] == [
        {
            "InputName": "shards",
            "S3Input": {"S3Uri": {"Get": "Steps.Similarity.ModelArtifacts.S3ModelArtifacts"},
                        "LocalPath": "/opt/ml/processing/input/shards", **common},
        },
        {
            "InputName": "normalized",
            "S3Input": {"S3Uri": NORMALIZED, "LocalPath": "/opt/ml/processing/input/normalized", **common},
        },
    ]  # fmt: skip
    assert args["ProcessingOutputConfig"] == {
        "Outputs": [
            {
                "OutputName": "artifact",
                "S3Output": {
                    "S3Uri": run_uri("artifact"),
                    "LocalPath": "/opt/ml/processing/output/artifact",
                    "S3UploadMode": "EndOfJob",
                },
            }
        ]
    }
    assert args["ProcessingResources"]["ClusterConfig"] == {
        "InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30
    }  # fmt: skip


def test_register_step_reads_the_artifact_where_merge_put_it(steps):
    """Register starts once Merge's output is uploaded (after Merge's container exits) and receives it as its
    input: the model package is created only from files that are where it will point."""
    args = steps["Register"]["Arguments"]
    app = args["AppSpecification"]
    assert app["ContainerEntrypoint"] == ["python3", "-m", "steps.register"]
    assert app["ContainerArguments"] == [
        option("execution-id", EXEC_ID),
        option("artifact-uri", run_uri("artifact")),
        option("model-package-group", get("ModelPackageGroup")),
        option("approval-status", get("ApprovalStatus")),
    ]  # fmt: skip
    assert args["ProcessingInputs"] == [{"InputName": "artifact", "S3Input": {
        "S3Uri": {"Get": "Steps.Merge.ProcessingOutputConfig.Outputs['artifact'].S3Output.S3Uri"},
        "LocalPath": "/opt/ml/processing/input/artifact", "S3DataType": "S3Prefix", "S3InputMode": "File",
        "S3DataDistributionType": "FullyReplicated", "S3CompressionType": "None"}}]
    assert args["ProcessingOutputConfig"] == {"Outputs": [{"OutputName": "registration", "S3Output": {
        "S3Uri": run_uri("artifact"), "LocalPath": "/opt/ml/processing/output/registration",
        "S3UploadMode": "EndOfJob"}}]}
    assert args["NetworkConfig"] == {"EnableNetworkIsolation": False}  # it calls the Model Registry


def test_spec_settings_reach_the_definition(compiled, tmp_path):
    """id_column, non_finite, sizes and limits come from the spec; no instance_types means no EnumValues."""
    text = SHIPPED.read_text()
    for old, new in [
        ("instance_types: [ml.c5.2xlarge, ml.c5.4xlarge, ml.c5.9xlarge, ml.m5.4xlarge]", ""),
        ("  id_column: null", "  id_column: doc_id"),
        ("  non_finite: error", "  non_finite: drop"),
        ("  vector_column: null", "  vector_column: embedding"),
        ("  delimiter: null", '  delimiter: "\\t"'),
        ("  chunk_rows: 65536", "  chunk_rows: 1000"),
        ("  memory_budget_mb: 1024", "  memory_budget_mb: 64"),
        ("  max_runtime_seconds: 86400", "  max_runtime_seconds: 7200"),
        ("name: allpairs-similarity", "name: other-pipeline"),
    ]:
        assert old in text, old
        text = text.replace(old, new, 1)
    (tmp_path / "pipeline.yaml").write_text(text)
    doc = json.loads(compile_definition(load_spec(tmp_path / "pipeline.yaml")))
    assert "EnumValues" not in doc["Parameters"][PARAMETER_NAMES.index("InstanceType")]
    by_name = {s["Name"]: s["Arguments"] for s in doc["Steps"]}
    assert by_name["Preprocess"]["AppSpecification"]["ContainerArguments"] == [
        option("input-uri", get("InputData")), "--non-finite=drop", "--chunk-rows=1000", "--memory-budget-mb=512",
        "--id-column=doc_id", "--vector-column=embedding", "--delimiter=\t",
    ]  # fmt: skip
    assert by_name["Similarity"]["HyperParameters"]["memory_budget_mb"] == "64"
    assert by_name["Similarity"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}


def test_sdk_refusals_become_one_line_compile_errors(tmp_path, monkeypatch, compiled):
    import pipeline.compile as compile_module

    def broken(*args, **kwargs):
        raise ValueError("volume_size_in_gb\n  Input should be a valid integer")

    monkeypatch.setattr(compile_module, "_processor", broken)
    with pytest.raises(CompileError) as info:
        compile_definition(load_spec(SHIPPED))
    assert str(info.value) == (
        f"{load_spec(SHIPPED).where('')}: cannot build the pipeline definition: ValueError: volume_size_in_gb"
    )


# ---------------------------------------------------------------------------------------------------------
# The public JSON schema (advisory, patched copy beside the repo; absent on a user's clone)


@pytest.fixture(scope="module")
def schema() -> dict:
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not present (it lives beside the repository, in ../shared)")
    return json.loads(SCHEMA.read_text())


def _errors(schema: dict, definition_name: str, instance: Any) -> list[str]:
    import jsonschema

    # One definition at a time: the top-level oneOf errors say nothing useful.
    validator = jsonschema.Draft7Validator({"$ref": f"#/definitions/{definition_name}", "definitions": schema["definitions"]})
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


@pytest.mark.parametrize("name", STEP_NAMES)
def test_each_step_validates_against_the_patched_schema(schema, steps, name):
    step = steps[name]
    kind = {"Processing": "ProcessingStep", "Training": "TrainingStep"}[step["Type"]]
    assert _errors(schema, kind, step) == []


def test_parameters_and_top_level_validate_against_the_patched_schema(schema, definition):
    kinds = {"String": "StringParameter", "Integer": "IntegerParameter", "Float": "FloatParameter"}
    for parameter in definition["Parameters"]:
        assert _errors(schema, kinds[parameter["Type"]], parameter) == []
    assert set(definition) <= set(schema["properties"])


# ---------------------------------------------------------------------------------------------------------
# Cloud settings: spot, KMS, VPC, isolation, tags, retries, caching (issue 3)

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SUBNETS = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
GROUPS = ["sg-0123456789abcdef0"]
TAGS = [{"Key": "team", "Value": "search"}, {"Key": "cost-center", "Value": "1234"}]


def everything_on(text: str) -> str:
    for old, new in [
        ("tags: {}", 'tags: {team: search, cost-center: "1234"}'),
        ("  spot: false", "  spot: true"),
        ("  max_wait_seconds: null ", "  max_wait_seconds: 172800"),
        ("  volume_kms_key: null", f"  volume_kms_key: {KMS_KEY}"),
        ("  output_kms_key: null", "  output_kms_key: alias/allpairs-output"),
        ("  subnets: []", f"  subnets: [{', '.join(SUBNETS)}]"),
        ("  security_groups: []", f"  security_groups: [{', '.join(GROUPS)}]"),
        ("  immutable_inputs: false", "  immutable_inputs: true"),
        ("  encrypt_inter_container_traffic: false", "  encrypt_inter_container_traffic: true"),
    ]:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.fixture(scope="module")
def secured(tmp_path_factory, compiled) -> tuple[dict, list[str]]:
    path = tmp_path_factory.mktemp("secured") / "pipeline.yaml"
    path.write_text(everything_on(SHIPPED.read_text()))
    with pytest.MonkeyPatch.context() as mp:
        guard = NetworkGuard(mp)
        text = compile_definition(load_spec(path))
    return json.loads(text), guard.attempts


def test_secured_spec_compiles_with_zero_network_calls(secured):
    assert secured[1] == []


def test_secured_spec_reaches_every_job(secured):
    steps = {s["Name"]: s["Arguments"] for s in secured[0]["Steps"]}
    vpc = {"SecurityGroupIds": GROUPS, "Subnets": SUBNETS}
    for name in ("Preprocess", "Merge", "Register"):
        args = steps[name]
        assert args["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == KMS_KEY
        assert args["ProcessingOutputConfig"]["KmsKeyId"] == "alias/allpairs-output"
        assert args["Tags"] == TAGS
    # Register calls the Model Registry: never isolated; the others need no network. Encryption between
    # containers on every job: a policy on sagemaker:InterContainerTrafficEncryption may refuse any job without it.
    encrypted = {"EnableInterContainerTrafficEncryption": True, "VpcConfig": vpc}
    assert steps["Preprocess"]["NetworkConfig"] == {"EnableNetworkIsolation": True, **encrypted}
    assert steps["Merge"]["NetworkConfig"] == {"EnableNetworkIsolation": True, **encrypted}
    assert steps["Register"]["NetworkConfig"] == {"EnableNetworkIsolation": False, **encrypted}
    sim = steps["Similarity"]
    assert sim["ResourceConfig"]["VolumeKmsKeyId"] == KMS_KEY
    assert sim["OutputDataConfig"]["KmsKeyId"] == "alias/allpairs-output"
    assert sim["VpcConfig"] == vpc and sim["EnableNetworkIsolation"] is True and sim["Tags"] == TAGS
    assert sim["EnableManagedSpotTraining"] is True and sim["EnableInterContainerTrafficEncryption"] is True
    assert sim["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800}
    # One checkpoint prefix per execution: a retried or restarted job of the execution resumes from it.
    assert sim["CheckpointConfig"] == {"S3Uri": run_uri("checkpoints"), "LocalPath": "/opt/ml/checkpoints"}


def test_caching_only_on_preprocess_and_only_when_inputs_are_immutable(secured, definition):
    assert [s.get("CacheConfig") for s in secured[0]["Steps"]] == [{"Enabled": True, "ExpireAfter": "P30D"}, None,
                                                                    None, None]
    assert [s.get("CacheConfig") for s in definition["Steps"]] == [None, None, None, None]


def test_every_step_retries_capacity_errors_with_backoff(definition):
    for step in definition["Steps"]:
        assert step["RetryPolicies"] == [
            {"BackoffRate": 2.0, "IntervalSeconds": 60, "MaxAttempts": 5, "ExceptionType": ["SageMaker.CAPACITY_ERROR"]}
        ]


def test_default_spec_is_on_demand_isolated_and_untagged(steps):
    assert "EnableManagedSpotTraining" not in steps["Similarity"]["Arguments"]
    assert "EnableInterContainerTrafficEncryption" not in steps["Similarity"]["Arguments"]  # the service's default
    assert steps["Similarity"]["Arguments"]["EnableNetworkIsolation"] is True
    assert steps["Preprocess"]["Arguments"]["NetworkConfig"] == {"EnableNetworkIsolation": True}
    assert steps["Merge"]["Arguments"]["NetworkConfig"] == {"EnableNetworkIsolation": True}
    assert steps["Register"]["Arguments"]["NetworkConfig"] == {"EnableNetworkIsolation": False}
    assert all("Tags" not in s["Arguments"] for s in steps.values())


@pytest.mark.parametrize("name", STEP_NAMES)
def test_each_secured_step_validates_against_the_patched_schema(schema, secured, name):
    step = {s["Name"]: s for s in secured[0]["Steps"]}[name]
    kind = {"Processing": "ProcessingStep", "Training": "TrainingStep"}[step["Type"]]
    assert _errors(schema, kind, step) == []


def test_a_value_over_a_service_limit_fails_at_compile_time_naming_its_line(tmp_path, monkeypatch, compiled):
    long_uri = "s3://my-bucket/" + "x" * 250
    text = SHIPPED.read_text().replace("  InputData: s3://my-bucket/allpairs/input/ ", f"  InputData: {long_uri} ", 1)
    (tmp_path / "pipeline.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    line = text.splitlines().index(next(l for l in text.splitlines() if l.startswith("  InputData: s3://"))) + 1
    with pytest.raises(CompileError) as info:
        compile_definition(load_spec("pipeline.yaml"))
    assert str(info.value) == (
        f"pipeline.yaml:{line}: parameters.InputData: step Preprocess passes the value of InputData in "
        "AppSpecification.ContainerArguments[0]: 277 characters where SageMaker allows 256; use a shorter value"
    )


def test_limits_count_inputs_and_definition_size():
    from pipeline.definition.limits import check_definition

    where = lambda name: "spec"  # noqa: E731
    step = {"Name": "P", "Type": "Processing", "Arguments": {"ProcessingInputs": [{}] * 11}}
    with pytest.raises(CompileError) as info:
        check_definition(json.dumps({"Steps": [step]}), {}, where)
    assert str(info.value) == "spec: step P: ProcessingInputs has 11 entries, SageMaker allows 10"
    big = json.dumps({"Steps": [], "Pad": "x" * 102400})
    with pytest.raises(CompileError) as info:
        check_definition(big, {}, where)
    assert str(info.value) == (
        f"spec: the compiled definition is {len(big)} bytes, over 102400 (SageMaker would need it staged in S3); "
        "shorten parameter defaults and descriptions"
    )
    env = {"Name": "T", "Type": "Training", "Arguments": {"HyperParameters": {"h": {"Std:Join": {
        "On": "", "Values": [{"Get": "Parameters.A"}, {"Get": "Execution.PipelineExecutionId"}]}}}}}
    check_definition(json.dumps({"Steps": [env]}), {"A": "a" * 2488}, where)  # 2488 + 12 = 2500: allowed
    with pytest.raises(CompileError) as info:
        check_definition(json.dumps({"Steps": [env]}), {"A": "a" * 2489}, where)
    assert str(info.value) == (
        "spec: step T passes the value of A in HyperParameters.h: 2501 characters where SageMaker allows 2500; "
        "use a shorter value"
    )
