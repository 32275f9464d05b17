"""The bad-input catalogue items not in tests/test_preprocess.py, each with its message word for word:
TopK <= 0 and MinScore outside [-1, 1] refused before any step runs, InstanceCount above the number of rows,
integer and float64 input converted with the cost stated, a matrix too big for the host's memory."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from steps import preprocess
from steps.errors import StepError
from steps.contract import Host
from steps.similarity import Settings, compute_shard, memory_message

REPO = Path(__file__).resolve().parents[1]


def cli_run(tmp_path, *params):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    args = ["run", "--spec", str(REPO / "pipeline.yaml"), "--workdir", str(tmp_path / "work"),
            "--param", f"InputData={data}", "--param", f"OutputPrefix={tmp_path / 'out'}"]
    for p in params:
        args += ["--param", p]
    return main(args)


@pytest.mark.parametrize("param, message", [
    ("TopK=0", "--param TopK=0: TopK must be an integer between 1 and 100000, got 0 (the number of neighbours "
               "kept per row); pass --param TopK=<value> within that range"),
    ("TopK=-3", "--param TopK=-3: TopK must be an integer between 1 and 100000, got -3 (the number of neighbours "
                "kept per row); pass --param TopK=<value> within that range"),
    ("MinScore=1.5", "--param MinScore=1.5: MinScore must be a number between -1 and 1, got 1.5 (cosine scores lie "
                     "in [-1, 1]; -1 keeps every pair); pass --param MinScore=<value> within that range"),
    ("MinScore=-2", "--param MinScore=-2: MinScore must be a number between -1 and 1, got -2.0 (cosine scores lie "
                    "in [-1, 1]; -1 keeps every pair); pass --param MinScore=<value> within that range"),
    ("InstanceCount=0", "--param InstanceCount=0: InstanceCount must be an integer between 1 and 64, got 0 (the "
                        "number of similarity hosts); pass --param InstanceCount=<value> within that range"),
])
def test_out_of_range_parameters_are_refused_before_any_step_runs(tmp_path, capsys, param, message):
    assert cli_run(tmp_path, param) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()  # no execution was started


def test_instance_count_above_the_number_of_rows(tmp_path, capsys):
    assert cli_run(tmp_path, "InstanceCount=5") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # Refused by the similarity hosts before any work (Preprocess no longer takes InstanceCount: its cache key
    # would change with it).
    assert re.fullmatch(r"error: step Similarity, host algo-\d failed: similarity: InstanceCount=5 is larger than "
                        r"the number of rows \(3\): use at most 3 instances \(--param InstanceCount=3\) "
                        r"\(log: \S+/Similarity/algo-\d/job.log\)", err), err
    assert not list((tmp_path / "out").glob("*/artifact"))


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(tmp_path))
    (tmp_path / "processing/input/matrix").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("dtype, large, expected", [
    (np.float64, None,
     "float64 input converted to float32 after normalizing in float64: values keep about 7 significant digits "
     "(relative rounding <= 6e-8), so scores are exact to about 1e-7, not 1e-16; the chunks take half the "
     "input's 8 bytes per value"),
    (np.int64, 2 ** 24 + 1,
     "int64 input converted to float32 after normalizing in float64: values keep about 7 significant digits "
     "(relative rounding <= 6e-8); 1 value(s) beyond 16777216 (2**24) in magnitude, where integers stop being "
     "exact in float32"),
    (np.float32, None, None),
])
def test_conversion_cost_is_stated_in_the_manifest_and_the_log(root, capsys, dtype, large, expected):
    X = np.arange(24).reshape(6, 4).astype(dtype)
    if large:
        X[2, 1] = large
    np.save(root / "processing/input/matrix/x.npy", X)
    preprocess.main(["--input-uri", "x.npy"])
    manifest = json.loads((root / "processing/output/normalized/manifest.json").read_text())
    assert manifest["input"]["conversion"] == expected
    out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("preprocess: progress ")]
    assert out[1:] == ([f"preprocess: {expected}"] if expected else [])


def test_memory_message_names_the_budget_and_an_instance_type_that_would_fit():
    host = Host("algo-2", ["algo-1", "algo-2"], "ml.c5.2xlarge")
    assert memory_message(10_000_000, 768, 1024, 16 << 30, host) == (
        "host algo-2 (ml.c5.2xlarge): the normalized matrix (10000000 rows x 768 float32 = 29297 MB) plus "
        "memory_budget_mb=1024 and 256 MB for the program need 30577 MB, but only 16384 MB are available; "
        "use an InstanceType with more memory (at least ml.m5.4xlarge, 64 GiB)")
    assert memory_message(1_000_000, 768, 4096, 8 << 30, Host("algo-1", ["algo-1"])) is None
    assert memory_message(1_000_000, 768, 8192, 8 << 30, Host("algo-1", ["algo-1"])) == (
        "host algo-1: the normalized matrix (1000000 rows x 768 float32 = 2930 MB) plus memory_budget_mb=8192 and "
        "256 MB for the program need 11378 MB, but only 8192 MB are available; use an InstanceType with more "
        "memory (at least ml.c5.2xlarge, 16 GiB), or lower similarity.memory_budget_mb to 5006")
    assert memory_message(100, 4, 16, None, host) is None  # memory unknown: no refusal


def test_a_matrix_too_big_for_the_host_is_refused_before_any_work(root, tmp_path):
    np.save(root / "processing/input/matrix/x.npy", np.ones((1000, 64), np.float32))
    preprocess.main(["--input-uri", "x.npy"])
    (tmp_path / "model").mkdir()
    with pytest.raises(StepError) as info:
        compute_shard(root / "processing/output/normalized", Host("algo-1", ["algo-1"]), Settings(5, None, 1024, 1),
                      tmp_path / "model", tmp_path / "ck", available=512 << 20)
    assert str(info.value) == (
        "host algo-1: the normalized matrix (1000 rows x 64 float32 = 1 MB) plus memory_budget_mb=1024 and 256 MB "
        "for the program need 1281 MB, but only 512 MB are available; use an InstanceType with more memory (at "
        "least ml.c5.xlarge, 8 GiB), or lower similarity.memory_budget_mb to 255")
    assert list((tmp_path / "model").iterdir()) == [] and not (tmp_path / "ck").exists()
