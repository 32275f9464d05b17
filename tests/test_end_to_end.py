"""`python -m pipeline run` end to end: several simulated hosts, the artifact checked against brute force."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from steps.contract import ARTIFACT_DATA_FILES, ARTIFACT_FILES
from steps.formats.artifact import result_view
from tests.brute import brute_force, normalize

REPO = Path(__file__).resolve().parents[1]


def run(tmp_path, data, *params, spec=REPO / "pipeline.yaml"):
    """Run the pipeline in-process; return the artifact folder."""
    out = tmp_path / "out"
    args = ["run", "--spec", str(spec), "--workdir", str(tmp_path / "work"),
            "--param", f"InputData={data}", "--param", f"OutputPrefix={out}"]
    for p in params:
        args += ["--param", p]
    assert main(args) == 0
    (artifact,) = out.glob("*/artifact")
    return artifact


def load(artifact):
    return np.load(artifact / "neighbors.npy"), np.load(artifact / "scores.npy")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(artifact):
    """Every data file's sha256, and the manifest's bytes without the facts of the run."""
    result = result_view(json.loads((artifact / "manifest.json").read_text()))
    return {**{name: sha256(artifact / name) for name in ARTIFACT_DATA_FILES},
            "manifest.json": json.dumps(result, sort_keys=True)}


def spec_with_budget(tmp_path, mb):
    text = (REPO / "pipeline.yaml").read_text().replace("memory_budget_mb: 1024", f"memory_budget_mb: {mb}")
    assert f"memory_budget_mb: {mb}" in text
    path = tmp_path / f"budget-{mb}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    rng = np.random.default_rng(42)
    centers = rng.standard_normal((8, 24))
    X = (centers[rng.integers(0, 8, 400)] + 0.3 * rng.standard_normal((400, 24))).astype(np.float32)
    X[17] = X[3]          # duplicate rows: a real, tied neighbour
    X[200] = X[3]
    X[99] = 0             # a zero row: no neighbours, nobody's neighbour
    path = tmp_path_factory.mktemp("data") / "X.npy"
    np.save(path, X)
    return path, X


def test_cli_run_matches_brute_force_and_is_identical_for_any_host_count(tmp_path, matrix):
    path, X = matrix
    out = tmp_path / "cli-out"
    # Once through the real command line, exactly as the README and the issue say.
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--param", f"InputData={path}", "--param", "InstanceCount=3",
         "--param", "TopK=10", "--param", f"OutputPrefix={out}", "--workdir", str(tmp_path / "w")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (artifact,) = out.glob("*/artifact")
    assert f"artifact: {artifact}" in proc.stdout
    neighbors, scores = load(artifact)
    bn, bs = brute_force(normalize(X), 10)
    assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)
    assert neighbors[3, :2].tolist() == [17, 200] and scores[3, 0] == scores[3, 1]
    assert (neighbors[99] == -1).all() and 99 not in neighbors
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["counts"]["zero_rows"] == 1
    assert [h["host"] for h in manifest["hosts"]] == ["algo-1", "algo-2", "algo-3"]
    assert sorted(p.name for p in artifact.iterdir()) == sorted([*ARTIFACT_FILES, "registration.json"])
    reference = fingerprint(artifact)
    for i, count in enumerate([1, 2, 5]):
        other = run(tmp_path / f"n{count}", path, f"InstanceCount={count}", "TopK=10")
        assert fingerprint(other) == reference, count
    for mb in (16, 64):  # 16 MB: blocks of a few rows; 64 MB: the whole matrix in one block
        other = run(tmp_path / f"b{mb}", path, "InstanceCount=2", "TopK=10", spec=spec_with_budget(tmp_path, mb))
        assert fingerprint(other) == reference, mb


def test_threshold_and_k_at_least_rows(tmp_path, matrix):
    """TopK=500 on 400 rows (one all-zero): a row has at most 398 neighbours, so k is 398, noted in the manifest;
    the columns dropped would have held padding only."""
    path, X = matrix
    artifact = run(tmp_path, path, "InstanceCount=2", "TopK=500", "MinScore=0.8")
    neighbors, scores = load(artifact)
    bn, bs = brute_force(normalize(X), 500, 0.8)
    assert neighbors.shape == (400, 398) and (bn[:, 398:] == -1).all()
    assert np.array_equal(neighbors, bn[:, :398]) and np.array_equal(scores, bs[:, :398], equal_nan=True)
    assert (scores[np.isfinite(scores)] >= np.float32(0.8)).all()
    edges = pq.read_table(artifact / "neighbors.parquet").to_pandas()
    assert len(edges) == int((bn >= 0).sum())
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert (manifest["k"], manifest["top_k"]) == (398, 500)
    assert manifest["notes"] == ["TopK=500 is more than any row can have: of 400 rows, 1 all-zero, a row has at most "
                                 "398 neighbours; k is 398, not 500 (columns of padding only are not written)"]


def test_one_row_matrix(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.ones((1, 5)))
    artifact = run(tmp_path, path, "InstanceCount=1", "TopK=3")
    neighbors, scores = load(artifact)
    assert neighbors.tolist() == [[-1]] and np.isnan(scores).all()  # no neighbour possible: one column kept
    assert pq.read_table(artifact / "neighbors.parquet").num_rows == 0


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_string_ids_reach_the_edge_list(tmp_path, fmt):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    X[7] = X[0]
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    frame.insert(0, "sku", [f"sku-{i:03d}" for i in range(60)])
    path = tmp_path / f"items.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    artifact = run(tmp_path, path, "InstanceCount=3", "TopK=4")
    edges = pq.read_table(artifact / "neighbors.parquet").to_pandas()
    bn, bs = brute_force(normalize(frame[[f"f{i}" for i in range(4)]].to_numpy(np.float64)), 4)
    expected = pd.DataFrame({
        "id": np.repeat([f"sku-{i:03d}" for i in range(60)], 4),
        "neighbor_id": [f"sku-{j:03d}" for j in bn.reshape(-1)],
        "rank": np.tile(np.arange(1, 5, dtype=np.int32), 60),
        "score": bs.reshape(-1),
    })
    pd.testing.assert_frame_equal(edges, expected, check_exact=False, atol=2e-6)
    assert edges.loc[edges.id == "sku-000", "neighbor_id"].iloc[0] == "sku-007"


def test_prefix_of_files_in_key_order(tmp_path):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((90, 6)).astype(np.float32)
    folder = tmp_path / "prefix"
    folder.mkdir()
    for i, part in enumerate(np.split(X, [30, 70])):
        np.save(folder / f"part-{i:02d}.npy", part)
    artifact = run(tmp_path, folder, "InstanceCount=2", "TopK=5")
    neighbors, scores = load(artifact)
    bn, bs = brute_force(normalize(X), 5)
    assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)


def test_failed_step_names_step_host_and_reason(tmp_path, capsys):
    path = tmp_path / "bad.npy"
    X = np.ones((5, 3))
    X[2, 1] = np.nan
    np.save(path, X)
    code = main(["run", "--workdir", str(tmp_path / "w"), "--param", f"InputData={path}",
                 "--param", f"OutputPrefix={tmp_path / 'out'}"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: step Preprocess, host algo-1 failed: preprocess: bad.npy row 2 column 1: value is NaN")
    assert not list((tmp_path / "out").glob("*/artifact"))
