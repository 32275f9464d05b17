"""pipeline.yaml loading and validation. Error messages are part of the interface: asserted word for word."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.spec import PARAMETER_NAMES, load_spec
from pipeline.spec.parameters import parameters_of

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pipeline.yaml"

MINIMAL = """\
name: demo
region: eu-west-1
role_arn: arn:aws:iam::123456789012:role/Demo
image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/allpairs:1
parameters:
  InputData: s3://bucket-a/in/
  OutputPrefix: s3://bucket-a/runs
  InstanceType: ml.c5.xlarge
"""


@pytest.fixture
def write(tmp_path, monkeypatch):
    """Write a spec as tmp/pipeline.yaml and work from tmp, so messages say `pipeline.yaml:<line>`."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str) -> Path:
        path = tmp_path / "pipeline.yaml"
        path.write_text(text)
        return path

    return _write


def error_of(path: Path | str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ---------------------------------------------------------------------------------------------------------
# The shipped spec


def test_shipped_spec_loads_with_every_attribute_typed():
    spec = load_spec(SHIPPED)
    assert spec.path == SHIPPED and spec.root == REPO
    assert spec.name == "allpairs-similarity"
    assert spec.region == "us-east-1"
    assert spec.role_arn == "arn:aws:iam::123456789012:role/AllpairsSageMakerRole"
    assert spec.image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/allpairs:latest"
    assert list(spec.parameters) == [p.name for p in parameters_of("all_pairs")]
    assert spec.parameters == {
        "InputData": "s3://my-bucket/allpairs/input/",
        "OutputPrefix": "s3://my-bucket/allpairs/runs",
        "InstanceCount": 2,
        "InstanceType": "ml.c5.2xlarge",
        "TopK": 10,
        "MinScore": -1.0,
        "ModelPackageGroup": "allpairs-similarity",
        "ApprovalStatus": "PendingManualApproval",
    }
    assert isinstance(spec.parameters["MinScore"], float)
    assert spec.instance_types == ("ml.c5.2xlarge", "ml.c5.4xlarge", "ml.c5.9xlarge", "ml.m5.4xlarge")
    assert (spec.input.id_column, spec.input.non_finite) == (None, "error")
    p = spec.preprocess
    assert (p.instance_type, p.volume_gb, p.max_runtime_seconds, p.chunk_rows) == ("ml.m5.xlarge", 30, 3600, 65536)
    s = spec.similarity
    assert (s.volume_gb, s.max_runtime_seconds, s.memory_budget_mb) == (30, 86400, 1024)
    m = spec.merge
    assert (m.instance_type, m.volume_gb, m.max_runtime_seconds) == ("ml.m5.xlarge", 30, 3600)
    assert spec.local.workdir == REPO / ".allpairs"
    assert spec.local.parameters == {
        "InputData": "data/sample/embeddings.parquet",
        "OutputPrefix": ".allpairs/output",
        "InstanceCount": 3,
    }


def test_local_parameters_resolve_paths_against_the_spec_folder_from_any_cwd(tmp_path, monkeypatch):
    folder = (tmp_path / "project").resolve()  # resolved: tmp may sit behind a symlink
    folder.mkdir()
    shutil.copy(SHIPPED, folder / "pipeline.yaml")
    monkeypatch.chdir(tmp_path)
    spec = load_spec("project/pipeline.yaml")
    assert spec.path == folder / "pipeline.yaml"
    assert spec.local.workdir == folder / ".allpairs"
    assert spec.local_parameters() == {
        "InputData": str(folder / "data/sample/embeddings.parquet"),
        "OutputPrefix": str(folder / ".allpairs/output"),
        "InstanceCount": 3,
    }


def test_local_parameters_leave_uris_alone(write):
    path = write(MINIMAL + "local:\n  parameters:\n    InputData: s3://bucket-a/x.npy\n    OutputPrefix: file:///tmp/out\n")
    assert load_spec(path).local_parameters() == {"InputData": "s3://bucket-a/x.npy", "OutputPrefix": "file:///tmp/out"}


def test_defaults_fill_optional_keys_and_sections(write):
    spec = load_spec(write(MINIMAL))
    assert spec.parameters == {
        "InputData": "s3://bucket-a/in/",
        "OutputPrefix": "s3://bucket-a/runs",
        "InstanceCount": 1,
        "InstanceType": "ml.c5.xlarge",
        "TopK": 10,
        "MinScore": -1.0,
        "ModelPackageGroup": "demo",  # the pipeline name
        "ApprovalStatus": "PendingManualApproval",
    }
    assert spec.instance_types is None
    assert spec.input.non_finite == "error" and spec.input.id_column is None
    assert spec.preprocess.chunk_rows == 65536 and spec.similarity.memory_budget_mb == 1024
    assert spec.local.workdir == Path.cwd() / ".allpairs" and spec.local.parameters == {}


def test_integer_min_score_becomes_a_float_and_local_overrides_keep_parameter_order(write):
    text = edit(MINIMAL, "  InstanceType: ml.c5.xlarge\n", "  InstanceType: ml.c5.xlarge\n  MinScore: 0\n")
    spec = load_spec(write(text + "local:\n  parameters:\n    TopK: 3\n    MinScore: 1\n    InputData: x.npy\n"))
    assert spec.parameters["MinScore"] == 0.0 and isinstance(spec.parameters["MinScore"], float)
    assert list(spec.local.parameters) == ["InputData", "TopK", "MinScore"]
    assert isinstance(spec.local.parameters["MinScore"], float)


def test_where_gives_file_and_line_of_a_yaml_path(write):
    spec = load_spec(write(MINIMAL))
    assert spec.where("parameters.InstanceType") == "pipeline.yaml:8"
    assert spec.where("no.such.key") == "pipeline.yaml"


# ---------------------------------------------------------------------------------------------------------
# Errors, word for word


def test_unknown_key_suggests_the_closest_name(write):
    shipped = SHIPPED.read_text()
    path = write(edit(shipped, "  memory_budget_mb: 1024", "  memory_budget: 1024"))
    line = shipped.splitlines().index("  memory_budget_mb: 1024   # memory for one block of scores; larger blocks "
                                      "are faster up to cache limits") + 1
    assert error_of(path) == (
        f"pipeline.yaml:{line}: similarity.memory_budget: unknown key; did you mean 'memory_budget_mb'?"
    )


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(write):
    assert error_of(write(MINIMAL + "zzz: 1\n")) == (
        "pipeline.yaml:9: zzz: unknown key; expected one of: name, region, role_arn, image, job_name_prefix, tags, "
        "mode, parameters, instance_types, input, queries, preprocess, similarity, merge, security, retry, cache, "
        "local"
    )


def test_unknown_parameter_name_suggests_the_closest(write):
    assert error_of(write(MINIMAL + "  Topk: 5\n")) == (
        "pipeline.yaml:9: parameters.Topk: unknown key; did you mean 'TopK'?"
    )


def test_unknown_local_parameter_name_suggests_the_closest(write):
    assert error_of(write(MINIMAL + "local:\n  parameters:\n    InstanceCnt: 3\n")) == (
        "pipeline.yaml:11: local.parameters.InstanceCnt: unknown key; did you mean 'InstanceCount'?"
    )


def test_wrong_type(write):
    assert error_of(write(MINIMAL + "similarity:\n  memory_budget_mb: lots\n")) == (
        "pipeline.yaml:10: similarity.memory_budget_mb: must be an integer between 16 and 786432, got 'lots'"
    )


def test_boolean_is_not_an_integer(write):
    assert error_of(write(MINIMAL + "preprocess:\n  chunk_rows: true\n")) == (
        "pipeline.yaml:10: preprocess.chunk_rows: must be an integer >= 1, got true"
    )


def test_out_of_range(write):
    assert error_of(write(MINIMAL + "similarity:\n  memory_budget_mb: 8\n")) == (
        "pipeline.yaml:10: similarity.memory_budget_mb: must be an integer between 16 and 786432, got 8"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("  TopK: 0", "parameters.TopK: must be an integer between 1 and 100000, got 0"),
        ("  MinScore: 1.5", "parameters.MinScore: must be a number between -1 and 1, got 1.5"),
        ("  MinScore: .nan", "parameters.MinScore: must be a number between -1 and 1, got nan"),
        ("  InstanceCount: 0", "parameters.InstanceCount: must be an integer between 1 and 1000, got 0"),
        (
            "  ApprovalStatus: approved",
            "parameters.ApprovalStatus: must be one of 'PendingManualApproval', 'Approved', 'Rejected', "
            "got 'approved'; did you mean 'Approved'?",
        ),
    ],
)
def test_parameter_ranges(write, line, message):
    assert error_of(write(MINIMAL + line + "\n")) == f"pipeline.yaml:9: {message}"


@pytest.mark.parametrize("value, shown", [("ab", "'ab'"), ('\'"\'', "'\"'"), ("''", "''")])
def test_a_delimiter_is_one_character(write, value, shown):
    assert error_of(write(MINIMAL + f"input:\n  delimiter: {value}\n")) == (
        f'pipeline.yaml:10: input.delimiter: must be one character such as ";" or "|" (a tab: "\\t", in double '
        f"quotes), got {shown}"
    )


def test_input_reading_options(write):
    spec = load_spec(write(MINIMAL + 'input:\n  delimiter: "\\t"\n  vector_column: embedding\n'))
    assert (spec.input.delimiter, spec.input.vector_column) == ("\t", "embedding")


def test_missing_required_key_points_at_its_mapping(write):
    assert error_of(write(edit(MINIMAL, "role_arn: arn:aws:iam::123456789012:role/Demo\n", ""))) == (
        "pipeline.yaml:1: role_arn: required key 'role_arn' is missing"
    )
    assert error_of(write(edit(MINIMAL, "  OutputPrefix: s3://bucket-a/runs\n", ""))) == (
        "pipeline.yaml:6: parameters.OutputPrefix: required key 'OutputPrefix' is missing"
    )


def test_missing_required_section(write):
    assert error_of(write(MINIMAL.split("parameters:")[0])) == (
        "pipeline.yaml:1: parameters: required key 'parameters' is missing"
    )


def test_bad_yaml_syntax_names_the_line(write):
    assert error_of(write(MINIMAL + "similarity:\n  volume_gb: 30\n   memory_budget_mb: 10\n")) == (
        "pipeline.yaml:11: invalid YAML: mapping values are not allowed here (column 20)"
    )


def test_bad_pipeline_name_with_underscore(write):
    assert error_of(write(edit(MINIMAL, "name: demo", "name: all_pairs"))) == (
        "pipeline.yaml:1: name: must be a SageMaker pipeline name: letters, digits and hyphens (no underscores), "
        "starting and ending with a letter or digit, at most 256 characters, got 'all_pairs'"
    )


def test_bad_role_arn(write):
    assert error_of(write(edit(MINIMAL, "arn:aws:iam::123456789012:role/Demo", "Demo"))) == (
        "pipeline.yaml:3: role_arn: must be an IAM role ARN like 'arn:aws:iam::123456789012:role/Name', got 'Demo'"
    )


def test_cloud_input_must_be_s3_with_a_hint_for_local_paths(write):
    assert error_of(write(edit(MINIMAL, "s3://bucket-a/in/", "data/x.npy"))) == (
        "pipeline.yaml:6: parameters.InputData: must be an s3:// URI, got 'data/x.npy'; "
        "local paths go under local.parameters"
    )


def test_output_prefix_must_not_end_with_a_slash(write):
    assert error_of(write(edit(MINIMAL, "s3://bucket-a/runs", "s3://bucket-a/runs/"))) == (
        "pipeline.yaml:7: parameters.OutputPrefix: must be an s3:// URI with no trailing '/', "
        "got 's3://bucket-a/runs/'"
    )


def test_non_finite_policy_with_suggestion(write):
    assert error_of(write(MINIMAL + "input:\n  non_finite: dorp\n")) == (
        "pipeline.yaml:10: input.non_finite: must be one of 'error', 'drop', got 'dorp'; did you mean 'drop'?"
    )


def test_instance_type_must_be_among_the_allowed_list(write):
    assert error_of(write(MINIMAL + "instance_types: [ml.c5.4xlarge, ml.c5.9xlarge]\n")) == (
        "pipeline.yaml:8: parameters.InstanceType: must be one of instance_types ('ml.c5.4xlarge', "
        "'ml.c5.9xlarge'), got 'ml.c5.xlarge'; add it to instance_types or pick a listed one"
    )


def test_instance_types_entries_are_checked(write):
    assert error_of(write(MINIMAL + "instance_types:\n  - ml.c5.xlarge\n  - c5.large\n")) == (
        "pipeline.yaml:11: instance_types[1]: must be a SageMaker instance type like 'ml.m5.xlarge', got 'c5.large'"
    )


def test_duplicate_key(write):
    assert error_of(write(MINIMAL + "name: again\n")) == (
        "pipeline.yaml:9: name: duplicate key (first set on line 1)"
    )


def test_section_must_be_a_mapping(write):
    assert error_of(write(MINIMAL + "merge: fast\n")) == (
        "pipeline.yaml:9: merge: must be a mapping with keys instance_type, volume_gb, max_runtime_seconds, "
        "got 'fast'"
    )


def test_empty_file(write):
    assert error_of(write("# nothing yet\n")) == (
        "pipeline.yaml:1: the spec is empty; expected a mapping with keys name, region, role_arn, image, "
        "job_name_prefix, tags, mode, parameters, instance_types, input, queries, preprocess, similarity, merge, "
        "security, retry, cache, local"
    )


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert error_of("nope.yaml") == "nope.yaml: no such file; pass the path of your pipeline.yaml"


def test_errors_name_the_path_as_given_outside_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "p.yaml").write_text(MINIMAL + "zzz: 1\n")
    monkeypatch.chdir(tmp_path / "b")
    assert error_of("../a/p.yaml").startswith("../a/p.yaml:9: zzz: unknown key; ")
    assert error_of(tmp_path / "a" / "p.yaml").startswith(f"{tmp_path}/a/p.yaml:9: zzz: unknown key; ")


# ---------------------------------------------------------------------------------------------------------
# Spot, security, tags, retries, caching, job names (issue 3)


def test_cloud_settings_default_to_off_or_safe(write):
    spec = load_spec(write(MINIMAL))
    assert spec.job_name_prefix == "allpairs" and spec.tags == {}
    assert (spec.similarity.spot, spec.similarity.max_wait_seconds) == (False, None)
    sec = spec.security
    assert (sec.volume_kms_key, sec.output_kms_key, sec.subnets, sec.security_groups) == (None, None, (), ())
    assert sec.network_isolation is True
    assert (spec.retry.max_attempts, spec.retry.interval_seconds) == (5, 60)
    assert (spec.cache.immutable_inputs, spec.cache.expire_after) == (False, "P30D")


def test_cloud_settings_are_read(write):
    spec = load_spec(write(MINIMAL + """\
job_name_prefix: team-a
tags: {team: search, cost-center: 1234}
similarity:
  max_runtime_seconds: 3600
  spot: true
  max_wait_seconds: 7200
security:
  volume_kms_key: alias/vol
  output_kms_key: arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab
  subnets: [subnet-0123456789abcdef0]
  security_groups: [sg-01234567]
  network_isolation: false
retry: {max_attempts: 1, interval_seconds: 5}
cache: {immutable_inputs: true, expire_after: PT12H}
"""))
    assert spec.job_name_prefix == "team-a" and spec.tags == {"team": "search", "cost-center": "1234"}
    assert (spec.similarity.spot, spec.similarity.max_wait_seconds) == (True, 7200)
    assert spec.security.subnets == ("subnet-0123456789abcdef0",) and spec.security.security_groups == ("sg-01234567",)
    assert spec.security.volume_kms_key == "alias/vol" and spec.security.network_isolation is False
    assert (spec.retry.max_attempts, spec.cache.immutable_inputs, spec.cache.expire_after) == (1, True, "PT12H")


@pytest.mark.parametrize(
    "extra, message",
    [
        ("similarity:\n  spot: true\n",
         "pipeline.yaml:10: similarity.spot: spot training needs similarity.max_wait_seconds (>= max_runtime_seconds "
         "86400: run time plus time waiting for spot capacity); add it"),
        ("similarity:\n  max_runtime_seconds: 7200\n  spot: true\n  max_wait_seconds: 3600\n",
         "pipeline.yaml:12: similarity.max_wait_seconds: must be >= similarity.max_runtime_seconds (7200), got 3600; "
         "SageMaker rejects a spot job that may wait less than it may run"),
        ("similarity:\n  max_wait_seconds: 3600\n",
         "pipeline.yaml:10: similarity.max_wait_seconds: applies to spot training only; set similarity.spot: true "
         "or remove it"),
        ("similarity:\n  spot: yes please\n",
         "pipeline.yaml:10: similarity.spot: must be true or false, got 'yes please'"),
        ("security:\n  subnets: [subnet-0123456789abcdef0]\n",
         "pipeline.yaml:10: security.subnets: a VPC needs both subnets and security_groups; add security.security_groups"),
        ("security:\n  security_groups: [sg-12]\n",
         "pipeline.yaml:10: security.security_groups[0]: must be an id like 'sg-0123456789abcdef0', got 'sg-12'"),
        ("security:\n  volume_kms_key: my-key\n",
         "pipeline.yaml:10: security.volume_kms_key: must be a KMS key id, key ARN, alias/<name> or alias ARN, "
         "got 'my-key'"),
        ("tags:\n  aws:owner: me\n",
         "pipeline.yaml:10: tags.aws:owner: tag keys starting with 'aws:' are reserved by AWS; rename it"),
        ("tags: [a, b]\n", "pipeline.yaml:9: tags: must be a mapping of tag keys to values, got a list"),
        ("tags:\n  team: [a]\n", "pipeline.yaml:10: tags.team: a tag value must be text, got a list"),
        ("retry:\n  max_attempts: 21\n",
         "pipeline.yaml:10: retry.max_attempts: must be an integer between 1 and 20, got 21"),
        ("cache:\n  expire_after: 30 days\n",
         "pipeline.yaml:10: cache.expire_after: must be an ISO 8601 duration like 'P30D' or 'PT12H', got '30 days'"),
        ("job_name_prefix: a-very-long-prefix-for-the-jobs-x\n",
         "pipeline.yaml:9: job_name_prefix: must be letters, digits and hyphens, at most 29 characters (job names "
         "are limited to 63 and SageMaker appends the step and a unique suffix), got "
         "'a-very-long-prefix-for-the-jobs-x'"),
        ("job_name_prefix: my_jobs\n",
         "pipeline.yaml:9: job_name_prefix: must be letters, digits and hyphens, at most 29 characters (job names "
         "are limited to 63 and SageMaker appends the step and a unique suffix), got 'my_jobs'"),
    ],
)
def test_cloud_setting_errors(write, extra, message):
    assert error_of(write(MINIMAL + extra)) == message


def test_too_many_tags(write):
    tags = "".join(f"  k{i}: v\n" for i in range(51))
    assert error_of(write(MINIMAL + "tags:\n" + tags)) == "pipeline.yaml:10: tags: 51 tags; AWS allows at most 50"


def test_pipeline_name_longer_than_256(write):
    assert error_of(write(edit(MINIMAL, "name: demo", "name: " + "a" * 257))) == (
        "pipeline.yaml:1: name: must be a SageMaker pipeline name: letters, digits and hyphens (no underscores), "
        "starting and ending with a letter or digit, at most 256 characters, got '" + "a" * 257 + "'"
    )


@pytest.mark.parametrize("instance_type, where", [
    ("ml.g5.2xlarge", "preprocess.instance_type"), ("ml.m5d.4xlarge", "merge.instance_type")])
def test_a_volume_kms_key_with_an_instance_store_type_is_refused_naming_the_key(write, instance_type, where):
    section = where.split(".")[0]
    text = MINIMAL + f"{section}:\n  instance_type: {instance_type}\nsecurity:\n  volume_kms_key: alias/jobs\n"
    assert error_of(write(text)) == (
        f"pipeline.yaml:{text.splitlines().index('  volume_kms_key: alias/jobs') + 1}: security.volume_kms_key "
        f"'alias/jobs' cannot be used with {instance_type}: its instance-store volumes are encrypted by the "
        "instance itself and SageMaker refuses a VolumeKmsKeyId for them; remove security.volume_kms_key or use an "
        f"instance type without local storage ({where})")


def test_every_instance_type_a_run_may_pick_is_checked_against_the_volume_kms_key(write):
    text = MINIMAL + "instance_types: [ml.c5.xlarge, ml.g4dn.xlarge]\nsecurity:\n  volume_kms_key: alias/jobs\n"
    assert error_of(write(text)).endswith("instance type without local storage (instance_types[1])")
    spec = load_spec(write(MINIMAL + "security:\n  volume_kms_key: alias/jobs\n"))
    problem = spec.value_problem(local=False)
    assert problem("InstanceType", "ml.c5.4xlarge") is None
    assert problem("InstanceType", "ml.p4d.24xlarge").startswith(
        "security.volume_kms_key 'alias/jobs' cannot be used with ml.p4d.24xlarge")
    assert load_spec(write(MINIMAL)).value_problem(local=False)("InstanceType", "ml.p4d.24xlarge") is None


def test_instance_store_families_follow_the_ec2_naming():
    from pipeline.spec import has_instance_store

    assert [t for t in ("ml.m5d.large", "ml.c5d.xlarge", "ml.r5d.2xlarge", "ml.g4dn.xlarge", "ml.p3dn.24xlarge",
                        "ml.p4d.24xlarge", "ml.m6id.large", "ml.g5.xlarge", "ml.trn1.32xlarge", "ml.p5.48xlarge",
                        "ml.c5.xlarge", "ml.m5.large", "ml.r5.large", "ml.p3.2xlarge", "ml.c6i.large",
                        "ml.g4ad.xlarge") if has_instance_store(t)] == [
        "ml.m5d.large", "ml.c5d.xlarge", "ml.r5d.2xlarge", "ml.g4dn.xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge",
        "ml.m6id.large", "ml.g5.xlarge", "ml.trn1.32xlarge", "ml.p5.48xlarge", "ml.g4ad.xlarge"]
