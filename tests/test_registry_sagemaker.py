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


BUCKET = "allpairs-test-bucket"


def merge_into_s3(monkeypatch, tmp_path, extra=()):
    """Merge run as its processing job, publishing to s3:// (moto); returns (exit code, its /opt/ml root)."""
    from steps import merge

    X = np.random.default_rng(3).standard_normal((40, 6)).astype(np.float32)
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    model = run_hosts(monkeypatch, tmp_path, normalized, 2, k=4)
    root = use_root(monkeypatch, tmp_path / "merge")
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(model)
    (root / "processing/input/normalized").symlink_to(normalized)
    params = [f"--parameter={name}" for name in ("TopK=4", "ApprovalStatus=Approved", "InputData=s3://b/in/")]
    code = merge.run(["--execution-id", "abc123", "--artifact-uri", f"s3://{BUCKET}/runs/abc123/artifact",
                      "--model-package-group", "allpairs-test", "--approval-status", "Approved", *params, *extra])
    return code, root


def test_merge_publishes_and_verifies_the_artifact_in_s3_then_registers(sagemaker, monkeypatch, tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    code, root = merge_into_s3(monkeypatch, tmp_path)
    assert code == 0, (root / "output/message").read_text()
    record = json.loads((root / "processing/output/artifact/registration.json").read_text())
    assert record["registry"] == "sagemaker" and record["approval_status"] == "Approved"
    # Every artifact object is in S3, byte for byte what the manifest lists, before the package names it.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {f"runs/abc123/artifact/{name}" for name in
                    ("neighbors.parquet", "neighbors.npy", "scores.npy", "manifest.json")}
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/abc123/artifact/manifest.json")["Body"].read())
    for name, entry in manifest["files"].items():
        body = s3.get_object(Bucket=BUCKET, Key=f"runs/abc123/artifact/{name}")["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["bytes"], entry["sha256"])
    assert list((root / "processing/output/artifact").iterdir()) == [root / "processing/output/artifact/registration.json"]
    described = sagemaker.describe_model_package(ModelPackageName=record["model_package_arn"])
    meta = described["CustomerMetadataProperties"]
    assert described["ModelApprovalStatus"] == "Approved" and "InferenceSpecification" not in described
    assert meta["artifact_uri"] == f"s3://{BUCKET}/runs/abc123/artifact" and meta["execution_id"] == "abc123"
    assert (meta["rows"], meta["k"], meta["param_TopK"], meta["param_ApprovalStatus"]) == ("40", "4", "4", "Approved")
    assert len(meta["input_fingerprint"]) == 64 and len(meta) <= registry.MAX_ENTRIES


def no_model_package(sagemaker) -> bool:
    groups = sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"]
    return all(not sagemaker.list_model_packages(ModelPackageGroupName=g["ModelPackageGroupName"])[
        "ModelPackageSummaryList"] for g in groups)


def test_a_failed_upload_leaves_no_model_package(sagemaker, monkeypatch, tmp_path):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    original = botocore.client.BaseClient._make_api_call

    def failing_put(client, operation, params):  # the second object cannot be written
        if operation == "PutObject" and params["Key"].endswith("neighbors.npy"):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", failing_put)
    code, root = merge_into_s3(monkeypatch, tmp_path)
    assert code == 1
    assert (root / "output/message").read_text() == (
        f"merge: s3://{BUCKET}/runs/abc123/artifact/neighbors.npy: cannot upload the artifact file (ClientError: An "
        "error occurred (AccessDenied) when calling the PutObject operation: Access Denied); the execution role "
        "needs s3:PutObject and s3:GetObject on OutputPrefix (and kms:GenerateDataKey on security.output_kms_key "
        "if set); rerun the Merge step\n")
    assert no_model_package(sagemaker)
    assert "Contents" not in boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET)
    assert not (root / "processing/output/artifact/registration.json").exists()


def test_an_object_missing_after_upload_leaves_no_model_package(sagemaker, monkeypatch, tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    original = botocore.client.BaseClient._make_api_call

    def lost(client, operation, params):  # the store acknowledges the write, then the object is not there
        response = original(client, operation, params)
        if operation == "PutObject" and params["Key"].endswith("scores.npy"):
            original(client, "DeleteObject", {"Bucket": params["Bucket"], "Key": params["Key"]})
        return response

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", lost)
    code, root = merge_into_s3(monkeypatch, tmp_path)
    assert code == 1
    assert "scores.npy: cannot upload the artifact file (ClientError: An error occurred (404) when calling the " \
           "HeadObject operation: Not Found)" in (root / "output/message").read_text()
    assert no_model_package(sagemaker)


def test_a_multipart_object_is_verified_part_by_part(sagemaker, monkeypatch, tmp_path):
    from steps import publish

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    monkeypatch.setattr(publish, "PART_BYTES", 5 << 20)  # S3's smallest part
    data = np.random.default_rng(0).bytes((11 << 20) + 7)
    (tmp_path / "big.bin").write_bytes(data)
    (done,) = publish.publish([tmp_path / "big.bin"], f"s3://{BUCKET}/x", None)
    assert done.bytes == len(data) and done.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket=BUCKET, Key="x/big.bin")["Body"].read() == data
