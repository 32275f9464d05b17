"""The planner's arithmetic, the instance facts it shares with the hosts, the input's shape read cheaply, and the
fit check that `run` and `start` make before anything runs."""
from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest

from pipeline import api, plan
from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.spec import load_spec
from steps import similarity
from steps.input_shape import MAX_FILES_READ, is_skipped, local_input, read_shape
from steps.instances import PROGRAM_MB, Facts, facts

REPO = Path(__file__).resolve().parents[1]
SPEC = load_spec(REPO / "pipeline.yaml")
SETTINGS = plan.Settings.of(SPEC)
BIG = plan.job_from_size(10_000_000, 768, 10)  # the example: 30.7 GB normalized
FLAT = plan.Throughput.flat(25.0)  # 25 GFLOP/s per core, whatever the share


# ---- the instance facts: one table for the hosts and the planner ------------------------------------------------


def test_one_table_of_instance_facts_that_states_its_date_and_region():
    known = facts()
    doc = json.loads((REPO / "steps" / "instances.json").read_text())
    assert (known.region, known.date, known.currency) == ("us-east-1", doc["date"], "USD") and doc["date"]
    assert [t.memory_gib for t in known.types] == sorted(t.memory_gib for t in known.types)
    assert similarity.INSTANCE_MEMORY_GIB == [(t.name, t.memory_gib) for t in known.types]
    c5 = known.get("ml.c5.2xlarge")
    assert (c5.vcpus, c5.cores, c5.memory_gib, c5.usable_mb) == (8, 4, 16, 14745)  # 16 GiB less 10%
    assert all(t.on_demand_per_hour > 0 and t.cores * 2 == t.vcpus for t in known.types)
    for name in SPEC.instance_types + (SPEC.preprocess.instance_type, SPEC.merge.instance_type):
        assert known.get(name), name  # every type the shipped spec offers can be checked


# ---- arithmetic -----------------------------------------------------------------------------------------------


def test_sizes_memory_and_disk_of_a_ten_million_row_job():
    assert plan.normalized_bytes(BIG) == 10_000_000 * 768 * 4 + 10_000_000 * 16
    # Every pair once: a host's lists hold its own rows and the mirrors of its pairs (up to half the corpus).
    assert plan.shards_bytes(BIG, 1) == 10_000_000 * 10 * 12
    assert plan.shards_bytes(BIG, 4) == (10_000_000 + 4 * 5_000_000) * 10 * 12
    assert plan.list_rows(BIG, 4) == 2_500_000 + 5_000_000 and plan.list_rows(BIG, 1) == 10_000_000
    assert plan.list_rows(BIG, 2) == 5_000_000 + 5_000_000
    assert plan.artifact_parts(BIG) == {"neighbors.npy": 400_000_000, "scores.npy": 400_000_000,
                                        "neighbors.parquet": 10_000_000 * 10 * 40, "report.html": 100_000}
    assert plan.share(10_000_000, 3) == 3_333_334
    assert plan.host_memory(BIG, 3, 1024) == {"matrix": 30_720_000_000, "blocks": 1024 * 10**6,
                                              "output": (3_333_334 + 5_000_000) * 10 * 12,
                                              "program": PROGRAM_MB * 10**6}
    disks = plan.disk_parts(BIG, 4)
    assert disks["Preprocess"] == {"the input": 30_720_000_000, "the normalized matrix": 30_880_000_000}
    assert disks["Similarity"] == {"the normalized matrix": 30_880_000_000, "its shard": 7_500_000 * 120,
                                   "every host's checkpoints (after a restart)": 3_600_000_000}
    assert sum(disks["Merge"].values()) == 30_880_000_000 + 3_600_000_000 + 4_800_100_000
    # The default volume (30, in GiB, less 5%) does not hold the normalized matrix: 28.5 GiB < 28.76 GiB.
    assert plan.volume_bytes(30) == int(30 * 2**30 * 0.95) < plan.normalized_bytes(BIG)
    assert plan.volume_needed(plan.normalized_bytes(BIG)) == 31 and plan.volume_needed(1) == 1
    assert plan.job_from_size(1000, 100, 5, density=0.01).input_bytes == 1000 * 100 * 0.01 * 8 + 1001 * 8


def test_time_and_cost_scale_with_the_share_and_the_cores():
    c5 = facts().get("ml.c5.2xlarge")
    seconds = plan.similarity_seconds(BIG, 4, c5.cores, FLAT)  # a quarter of the pairs, each product once
    assert seconds == pytest.approx(10_000_000 * 10_000_000 * 768 / 4 / (25e9 * 4))
    found = plan.estimate(BIG, SETTINGS, c5, 4, FLAT, facts())
    assert found.on_demand == pytest.approx(4 * seconds / 3600 * 0.408)
    assert found.spot == pytest.approx(found.on_demand * 0.3)
    assert found.memory_need == sum(plan.host_memory(BIG, 4, 1024).values()) and not found.fits  # 16 GiB


def test_the_fewest_hosts_that_fit_and_finish_in_time():
    c5 = facts().get("ml.c5.9xlarge")  # 72 GiB: the matrix fits
    target = 12 * 3600
    found = plan.smallest_count(BIG, SETTINGS, c5, FLAT, target, facts())
    assert found.seconds <= target < plan.similarity_seconds(BIG, found.hosts - 1, c5.cores, FLAT)
    assert found.fits
    assert plan.smallest_count(BIG, SETTINGS, facts().get("ml.c5.2xlarge"), FLAT, target, facts()) is None
    small = plan.job_from_size(5, 4, 10)
    assert plan.smallest_count(small, SETTINGS, c5, FLAT, 1e-12, facts()).hosts == 5  # never more hosts than rows


def test_the_measured_throughput_is_per_core_and_the_work_divides_by_the_hosts():
    speed = plan.Throughput.measured({"cores": 2, "gflops": 50.0})  # 25 GFLOP/s per core
    assert speed.seconds_per_gflop == pytest.approx(1 / 25)
    job = plan.job_from_size(1_000_000, 100, 10)
    one = plan.similarity_seconds(job, 1, 1, speed)
    assert one == pytest.approx(1_000_000 * 1_000_000 * 100 / 1e9 / 25)
    assert plan.similarity_seconds(job, 4, 1, speed) == pytest.approx(one / 4)  # no pair is computed twice
    assert plan.similarity_seconds(job, 4, 8, speed) == pytest.approx(one / 32)


def test_the_fit_check_names_what_does_not_fit_and_the_fix():
    fit = plan.check_fit(BIG, SETTINGS, "ml.c5.2xlarge", 3, SPEC.where)
    assert fit.problems == [
        "InstanceType=ml.c5.2xlarge: each of the 3 similarity hosts needs 33,000 MB (the normalized matrix 30,720 MB, "
        "similarity.memory_budget_mb 1,024, its output 1,000 MB, 256 MB for the program), more than the 14,745 MB "
        "ml.c5.2xlarge leaves to a job (16 GiB less 10%): use InstanceType=ml.m5.4xlarge (64 GiB) or larger",
        f"{SPEC.where('preprocess.volume_gb')}: preprocess.volume_gb is 30 but Preprocess stores 61.6 GB (the input "
        "30.7 GB, the normalized matrix 30.9 GB): set preprocess.volume_gb to at least 61",
        f"{SPEC.where('similarity.volume_gb')}: similarity.volume_gb is 30 but each similarity host stores 34.9 GB "
        "(the normalized matrix 30.9 GB, its shard 1.0 GB, every host's checkpoints (after a restart) 3.0 GB): set "
        "similarity.volume_gb to at least 35",
        f"{SPEC.where('merge.volume_gb')}: merge.volume_gb is 30 but Merge stores 38.7 GB (the normalized matrix "
        "30.9 GB, the shards 3.0 GB, the artifact 4.8 GB): set merge.volume_gb to at least 38",
    ]
    roomy = replace(SETTINGS, volume_gb={step: 64 for step in SETTINGS.volume_gb})
    assert plan.check_fit(BIG, roomy, "ml.c5.9xlarge", 3, SPEC.where).problems == []
    unknown = plan.check_fit(plan.job_from_size(10, 2, 1), SETTINGS, "ml.x9.huge", 1, SPEC.where)
    assert unknown.problems == [] and unknown.notes == [
        "InstanceType=ml.x9.huge is not in steps/instances.json: its memory is not checked before the run (each "
        "similarity host checks its own)"]
    with pytest.raises(UsageError, match=r"^InstanceType=ml.c5.2xlarge: each of the 3 .* \(nothing was started; "
                                         r"`python -m pipeline plan` shows what fits\)$"):
        plan.enforce(fit, exact=True, say=None)
    said = []
    plan.enforce(fit, exact=False, say=said.append)  # an estimated shape: a warning each, no refusal
    assert len(said) == 4 and said[0].startswith("note: with the estimated shape, this may not fit: InstanceType=")


# ---- the input's shape, read cheaply ----------------------------------------------------------------------------


def test_the_shape_from_headers_footers_and_a_csv_sample(tmp_path):
    X = np.random.default_rng(0).standard_normal((5000, 7))
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "a.npy", X[:2000])
    np.save(tmp_path / "npy" / "b.npy", X[2000:])
    (tmp_path / "npy" / "_SUCCESS").write_text("")  # skipped as the readers skip it
    shape = read_shape(*local_input(tmp_path / "npy"))
    assert (shape.rows, shape.dim, shape.exact, shape.format, shape.files, shape.source_bytes_per_value) == (
        5000, 7, True, "npy", 2, 8)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(7)]).assign(name=[f"id-{i}" for i in range(5000)])
    frame.to_parquet(tmp_path / "x.parquet")
    assert (read_shape(*local_input(tmp_path / "x.parquet")).rows, read_shape(*local_input(tmp_path / "x.parquet")).dim) == (5000, 7)
    assert read_shape(*local_input(tmp_path / "x.parquet"), id_column="f0").dim == 6
    pd.concat([frame] * 40).to_csv(tmp_path / "x.csv", index=False)  # 200,000 rows, about 25 MB: sampled
    csv = read_shape(*local_input(tmp_path / "x.csv"))
    assert not csv.exact and csv.dim == 7 and abs(csv.rows - 200_000) < 2_000
    frame.head(10).to_csv(tmp_path / "small.csv", index=False)  # read whole: exact
    small = read_shape(*local_input(tmp_path / "small.csv"))
    assert (small.rows, small.dim, small.exact) == (10, 7, True)


def test_the_skip_rule_is_the_readers_and_many_files_are_extrapolated(tmp_path):
    from steps.readers import _is_skipped

    for key in ("a.npy", ".hidden/a.npy", "_temporary/0/a.npy", "part/_SUCCESS", "x/.a.crc", "d/e/f.parquet"):
        assert is_skipped(key) == _is_skipped(Path(key)), key
    files = [(f"part-{i:05d}.npy", 1000) for i in range(MAX_FILES_READ + 100)]
    header = np.lib.format.header_data_from_array_1_0(np.zeros((10, 3)))
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    shape = read_shape(files, lambda key, offset, length: buffer.getvalue()[:length])
    assert shape.rows == round(10 * MAX_FILES_READ * (MAX_FILES_READ + 100) / MAX_FILES_READ) and not shape.exact


# ---- the commands -------------------------------------------------------------------------------------------------


def test_plan_command_prints_sizes_candidates_and_a_recommendation(capsys):
    assert main(["plan", "--rows", "10000000", "--dim", "768", "--gflops-per-core", "25"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "input: given: 10,000,000 rows x 768, density 1; k 10"
    assert out[1] == "kernel: 25 GFLOP/s per core (given, not measured)"
    assert "  Preprocess    61.60 GB of   30 GB  too small: set preprocess.volume_gb to at least 61" in out
    assert "  Register       4.80 GB of   30 GB  ok" in out
    c5 = next(line for line in out if line.startswith("  ml.c5.2xlarge"))
    assert c5.split()[-5:] == [">", "14,745", "does", "not", "fit"]
    hosts = math.ceil(plan.similarity_seconds(BIG, 1, 18, FLAT) / (12 * 3600))
    recommended = plan.estimate(BIG, SETTINGS, facts().get("ml.c5.9xlarge"), hosts, FLAT, facts())
    assert (f"recommended: --param InstanceType=ml.c5.9xlarge --param InstanceCount={hosts} "
            f"({plan.duration(recommended.seconds)}, {plan.money(recommended.on_demand)} on-demand, "
            f"{plan.money(recommended.spot)} spot)") in out
    assert any(line.startswith("these parameters: InstanceType=ml.c5.2xlarge InstanceCount=3: ") and
               line.endswith("refused by `run` and `start`:") for line in out)


def test_plan_reads_the_shape_of_the_local_input_and_calibrates_here(capsys):
    assert main(["plan", "--hours", "1"]) == 0  # the sample (local.parameters), a real calibration
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("data/sample/embeddings.parquet: 3,000 rows x 64 (exact; 1 parquet file, 0.8 MB); k 10")
    assert out[1].startswith("kernel: measured here on ") and "(steps/calibrate.py): " in out[1]
    assert " GFLOP/s per core on 3,000 rows (each pair's product once)" in out[1]
    assert any(line.startswith("this machine: `python -m pipeline run` would compute the similarity step in about ")
               for line in out)
    assert main(["plan", "--rows", "10"]) == 2
    assert capsys.readouterr().err == ("error: --rows and --dim go together, both at least 1 (or give neither: the "
                                       "shape is read from InputData)\n")


def tiny_memory(monkeypatch, name: str = "ml.c5.2xlarge") -> None:
    """The planner sees `name` with 1 GiB: a small matrix is then too big for it."""
    real = facts()
    types = tuple(replace(t, memory_gib=1) if t.name == name else t for t in real.types)
    monkeypatch.setattr(plan, "facts", lambda: Facts(types, real.region, real.date, real.currency, real.spot_savings))


def test_run_refuses_a_job_that_cannot_fit_before_anything_runs(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "X.npy", np.zeros((100_000, 128), np.float32))  # 51 MB normalized
    tiny_memory(monkeypatch)
    args = ["run", "--workdir", str(tmp_path / "w"), "--param", f"InputData={tmp_path / 'X.npy'}",
            "--param", f"OutputPrefix={tmp_path / 'out'}", "--param", "InstanceCount=2"]
    assert main(args + ["--param", "TopK=5"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: InstanceType=ml.c5.2xlarge: each of the 2 similarity hosts needs 1,337 MB (the normalized matrix 51 MB, "
        "similarity.memory_budget_mb 1,024, its output 6 MB, 256 MB for the program), more than the 921 MB "
        "ml.c5.2xlarge leaves to a job (1 GiB less 10%): use InstanceType=ml.c5.xlarge (8 GiB) or larger (nothing "
        "was started; `python -m pipeline plan` shows what fits)")
    assert not (tmp_path / "w").exists()  # no execution, nothing written


def test_with_an_estimated_shape_run_warns_and_runs(tmp_path, monkeypatch, capsys):
    pd.DataFrame(np.random.default_rng(1).standard_normal((30, 3)), columns=list("abc")).to_csv(tmp_path / "x.csv", index=False)
    path = tmp_path / "x.csv"
    monkeypatch.setattr("steps.input_shape.CSV_SAMPLE_BYTES", 200)  # so this small CSV is sampled, not read whole
    tiny_memory(monkeypatch)
    monkeypatch.setattr(plan, "PROGRAM_MB", 10**6)  # the estimate never fits
    said = []
    job, _ = plan.job_of_input(str(path), 5, None)
    assert not job.exact
    api.check_fit(SPEC, {"InputData": str(path), "TopK": 5, "InstanceType": "ml.c5.2xlarge", "InstanceCount": 1},
                  said.append)
    assert said and all(line.startswith("note: with the estimated shape, this may not fit: ") for line in said)
    said.clear()
    api.check_fit(SPEC, {"InputData": "s3://bucket/x.npy", "TopK": 5, "InstanceType": "ml.c5.2xlarge",
                         "InstanceCount": 1}, said.append)
    assert said == ["note: no fit check before the run: s3://bucket/x.npy is on S3 and this command reads no S3 input "
                    "before running; each step checks what it can as it starts (`python -m pipeline plan --rows N "
                    "--dim D` sizes the job)"]


def test_start_reads_the_shape_from_s3_and_refuses_before_starting(monkeypatch, tmp_path):
    from tests.test_aws import CallRecorder, TRUST, real_spec_text

    for var in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    from moto import mock_aws

    spec_path = tmp_path / "pipeline.yaml"
    spec_path.write_text(real_spec_text())
    with mock_aws():
        boto3.client("iam", region_name="us-east-1").create_role(RoleName="AllpairsSageMakerRole",
                                                                 AssumeRolePolicyDocument=json.dumps(TRUST))
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((100_000, 128), np.float32))
        s3.put_object(Bucket="data", Key="in/part-0.npy", Body=buffer.getvalue())
        s3.put_object(Bucket="data", Key="in/_SUCCESS", Body=b"")
        from pipeline import aws

        files, read = aws.input_objects(aws.connect(load_spec(spec_path)), "s3://data/in/")
        assert sorted(files) == [("_SUCCESS", 0), ("part-0.npy", len(buffer.getvalue()))]
        assert read("part-0.npy", 0, 6) == b"\x93NUMPY" and len(read("part-0.npy", -8, 8)) == 8
        tiny_memory(monkeypatch)
        recorder = CallRecorder(monkeypatch)
        with pytest.raises(UsageError, match=r"^InstanceType=ml.c5.2xlarge: each of the 2 similarity hosts needs "):
            api.start(spec_path, ["InputData=s3://data/in/"])
        assert "StartPipelineExecution" not in recorder.operations and "GetObject" in recorder.operations
        said = []
        with pytest.raises(Exception):  # not deployed: the fit check could not read the input, and said so
            api.start(spec_path, ["InputData=s3://nobucket/in/"], say=said.append)
        assert said[0].startswith("note: no fit check before the run: s3://nobucket/in/: S3 list_objects_v2 "
                                  "s3://nobucket/in/: NoSuchBucket")
