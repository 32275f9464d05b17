"""Fault injection through the local runner (ALLPAIRS_FAULTS): hosts killed mid-run and restarted as spot
restarts them; the artifact must be byte-identical to an uninterrupted run's."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import UsageError
from pipeline.local.faults import Fault, host_faults, parse_faults
from pipeline.local.plan import StepPlan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """600 rows in chunks of 50: every one of 3 hosts computes 4 blocks (the kernel yields per chunk)."""
    folder = tmp_path_factory.mktemp("faults")
    X = np.random.default_rng(11).standard_normal((600, 6)).astype(np.float32)
    X[10] = X[590]
    X[300] = 0
    np.save(folder / "X.npy", X)
    spec = folder / "pipeline.yaml"
    text = (REPO / "pipeline.yaml").read_text().replace("chunk_rows: 65536", "chunk_rows: 50")
    assert "chunk_rows: 50" in text
    spec.write_text(text)
    return folder / "X.npy", spec


def run(tmp_path, setup, monkeypatch, faults=""):
    data, spec = setup
    monkeypatch.setenv("ALLPAIRS_FAULTS", faults)
    monkeypatch.setenv("ALLPAIRS_CHECKPOINT_SECONDS", "0")  # a checkpoint per block: the kill point is exact
    out = tmp_path / "out"
    code = main(["run", "--spec", str(spec), "--workdir", str(tmp_path / "work"), "--param", f"InputData={data}",
                 "--param", f"OutputPrefix={out}", "--param", "InstanceCount=3", "--param", "TopK=4"])
    assert code == 0
    (artifact,) = out.glob("*/artifact")
    (record,) = (tmp_path / "work/executions").glob("*/execution.json")
    return artifact, json.loads(record.read_text())


def digest(artifact: Path) -> str:
    return hashlib.sha256(b"".join((artifact / name).read_bytes()
                                   for name in ("neighbors.npy", "scores.npy", "neighbors.parquet"))).hexdigest()


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        artifact, _ = run(tmp_path_factory.mktemp("ref"), setup, mp)
    finally:
        mp.undo()
    return digest(artifact)


def log_of(record: dict, host: str) -> str:
    return Path(record["steps"][1]["hosts"][host]["log"]).read_text()


def test_one_host_killed_after_two_checkpoints_restarts_and_the_artifact_is_identical(
        tmp_path, setup, monkeypatch, reference):
    artifact, record = run(tmp_path, setup, monkeypatch, "Similarity:algo-2:after-checkpoints=2")
    assert digest(artifact) == reference
    hosts = record["steps"][1]["hosts"]
    assert hosts["algo-2"]["restarts"] == 1 and "restarts" not in hosts["algo-1"]
    log = log_of(record, "algo-2").splitlines()
    killed = log.index("algo-2: fault injected: killed after checkpoint 2 (rows [250, 300)); "
                       "sending SIGKILL to this host")
    assert log[killed + 1] == "--- Similarity algo-2: restarted after an injected fault, as spot restarts it ---"
    assert log[killed + 2].startswith("algo-2: resumed rows [200, 250) from checkpoint rows-000000000200-000000000250.")
    assert log[killed + 3].startswith("algo-2: resumed rows [250, 300) from checkpoint")
    assert log[-1].startswith("algo-2: rows [200, 400) done in") and log[-1].endswith("(100 resumed from checkpoints)")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["counts"]["zero_rows"] == 1


def test_whole_step_killed_during_a_checkpoint_write_restarts_and_discards_the_torn_file(
        tmp_path, setup, monkeypatch, reference):
    artifact, record = run(tmp_path, setup, monkeypatch, "Similarity:*:during-checkpoint=2")
    assert digest(artifact) == reference
    hosts = record["steps"][1]["hosts"]
    assert [hosts[h].get("restarts") for h in ("algo-1", "algo-2", "algo-3")] == [1, 1, 1]
    log = log_of(record, "algo-1").splitlines()
    killed = log.index("algo-1: fault injected: killed while writing checkpoint 2 (rows [50, 100)); "
                       "sending SIGKILL to this host")
    assert log[killed + 2].startswith("algo-1: discarding partial checkpoint write .rows-000000000050-000000000100.")
    assert log[killed + 2].endswith(" (its writer was killed); those rows are computed again")
    assert log[killed + 3].startswith("algo-1: resumed rows [0, 50) from checkpoint")
    checkpoints = next(artifact.parent.glob("checkpoints"))
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert len(list(checkpoints.iterdir())) == 12  # every block of every host, once


def test_a_malformed_fault_is_refused_before_anything_runs(tmp_path, setup, monkeypatch, capsys):
    data, spec = setup
    monkeypatch.setenv("ALLPAIRS_FAULTS", "Similarity:algo-2:after=2")
    code = main(["run", "--spec", str(spec), "--workdir", str(tmp_path / "w"), "--param", f"InputData={data}",
                 "--param", f"OutputPrefix={tmp_path / 'out'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: ALLPAIRS_FAULTS: 'Similarity:algo-2:after=2' is not STEP:HOST:CONDITION; for example "
        "Similarity:algo-2:after-checkpoints=2 or Similarity:*:during-checkpoint=1;signal=TERM")
    assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


def test_fault_parsing_and_validation_messages():
    plans = [StepPlan("Preprocess", "Processing", {}, (), ()), StepPlan("Similarity", "Training", {}, (), ())]
    assert parse_faults("Similarity:algo-2:after-checkpoints=2, Similarity:*:during-checkpoint=1;signal=TERM",
                        plans) == [Fault("Similarity", "algo-2", "after-checkpoints=2"),
                                   Fault("Similarity", "*", "during-checkpoint=1;signal=TERM")]
    with pytest.raises(UsageError) as info:
        parse_faults("Preprocess:algo-1:after-checkpoints=1", plans)
    assert str(info.value) == ("ALLPAIRS_FAULTS: 'Preprocess:algo-1:after-checkpoints=1': faults apply to training "
                               "steps (they checkpoint), and 'Preprocess' is a Processing step; training steps: "
                               "Similarity")
    with pytest.raises(Exception) as info:
        host_faults(parse_faults("Similarity:algo-4:after-checkpoints=1", plans), "Similarity", ["algo-1", "algo-2"])
    assert str(info.value) == ("ALLPAIRS_FAULTS: step Similarity runs hosts algo-1..algo-2, so 'algo-4' cannot "
                               "take a fault: name one of them")
