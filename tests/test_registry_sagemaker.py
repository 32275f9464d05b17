"""Merge's registration in the SageMaker Model Registry, against moto: group created if missing (or by a racing
execution), a new version each time, no inference container, approval status from the parameter, metadata
within CustomerMetadataProperties' limits."""
from __future__ import annotations

import hashlib
import json

import boto3
import botocore.client
import numpy as np
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from steps import registry
from steps.errors import StepError
from tests.test_steps import run_hosts, run_preprocess, use_root


@pytest.fixture
def sagemaker(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "ALLPAIRS_LOCAL_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # SageMaker sets AWS_REGION in the job
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


def test_versions_in_a_group_created_on_first_use(sagemaker):
    first = registry.register("sim-models", "PendingManualApproval", "first", {"rows": "10"}, "t1")
    second = registry.register("sim-models", "Approved", "second", {"rows": "12"}, "t2")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["model_package_arn"].endswith(":model-package/sim-models/1")
    assert sagemaker.describe_model_package_group(ModelPackageGroupName="sim-models")["ModelPackageGroupName"]
    described = sagemaker.describe_model_package(ModelPackageName=second["model_package_arn"])
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["CustomerMetadataProperties"] == {"rows": "12"}
    assert "InferenceSpecification" not in described


def test_an_existing_group_and_a_racing_creator_are_fine(sagemaker, monkeypatch):
    sagemaker.create_model_package_group(ModelPackageGroupName="taken")
    original = botocore.client.BaseClient._make_api_call

    def racing(client, operation, params):  # another execution created it first; the wording is the service's
        if operation == "CreateModelPackageGroup":
            raise ClientError({"Error": {"Code": "ConflictException", "Message": "in progress"}}, operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", racing)
    assert registry.register("taken", "Rejected", "d", {}, "t1")["version"] == 1


def test_a_refused_registration_names_the_permissions(sagemaker, monkeypatch):
    def denied(client, operation, params):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, operation)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", denied)
    with pytest.raises(StepError) as info:
        registry.register("g", "Approved", "d", {}, "t1")
    assert str(info.value) == (
        "SageMaker Model Registry, group 'g': An error occurred (AccessDeniedException) when calling the "
        "CreateModelPackageGroup operation: not allowed; the execution role needs sagemaker:CreateModelPackageGroup "
        "and sagemaker:CreateModelPackage"
    )


def test_metadata_respects_the_registry_limits():
    meta = registry.customer_metadata({"uri": "s3://b/" + "x" * 300, "n": 3, "t": None, "e": "", "odd": "a,b(c)*"})
    assert len(meta["uri"]) == 256 and meta["uri"].endswith("...") and meta["n"] == "3"
    assert (meta["t"], meta["e"], meta["odd"]) == ("none", "none", "a_b_c__")
    with pytest.raises(ValueError):
        registry.customer_metadata({f"k{i}": i for i in range(51)})


def test_register_names_the_artifact_in_sagemaker_with_the_approval_parameter(sagemaker, monkeypatch, tmp_path):
    from steps import merge, register

    X = np.random.default_rng(3).standard_normal((40, 6)).astype(np.float32)
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    model = run_hosts(monkeypatch, tmp_path, normalized, 2, k=4)
    root = use_root(monkeypatch, tmp_path / "merge")
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(model)
    (root / "processing/input/normalized").symlink_to(normalized)
    params = [f"--parameter={name}" for name in ("TopK=4", "ApprovalStatus=Approved", "InputData=s3://b/in/")]
    uri = "s3://b/runs/abc123/artifact"
    assert merge.run(["--execution-id", "abc123", "--artifact-uri", uri, *params]) == 0
    artifact = root / "processing/output/artifact"
    root = use_root(monkeypatch, tmp_path / "register")
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/artifact").symlink_to(artifact)
    code = register.run(["--execution-id", "abc123", "--artifact-uri", uri, "--model-package-group", "allpairs-test",
                         "--approval-status", "Approved"])
    assert code == 0, (root / "output/message").read_text()
    record = json.loads((root / "processing/output/registration/registration.json").read_text())
    assert record["registry"] == "sagemaker" and record["approval_status"] == "Approved"
    described = sagemaker.describe_model_package(ModelPackageName=record["model_package_arn"])
    meta = described["CustomerMetadataProperties"]
    assert described["ModelApprovalStatus"] == "Approved" and "InferenceSpecification" not in described
    assert meta["artifact_uri"] == uri and meta["execution_id"] == "abc123"
    assert (meta["rows"], meta["k"], meta["param_TopK"], meta["param_ApprovalStatus"]) == ("40", "4", "4", "Approved")
    assert len(meta["input_fingerprint"]) == 64 and len(meta) <= registry.MAX_ENTRIES
    assert meta["manifest_sha256"] == hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()
