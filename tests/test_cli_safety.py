"""What the CLI prints can be trusted and what a local run starts is bounded (issue 11): control characters in a
value or a file name never forge a line; InstanceCount has a local limit, said with the fix; the inter-container
encryption switch runs locally; MinScore=1.0 keeps every exact duplicate end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main, printable
from pipeline.errors import LocalRunError
from pipeline.local import run_local
from tests.brute import brute_force, normalize

REPO = Path(__file__).resolve().parents[1]


def run_args(tmp_path, *params, spec=REPO / "pipeline.yaml"):
    args = ["run", "--spec", str(spec), "--workdir", str(tmp_path / "work")]
    for p in params:
        args += ["--param", p]
    return args


@pytest.mark.parametrize("value", ["/tmp/out\nerror: forged", "/tmp/out\rerror: forged", "/tmp/\x1b[2Kout"])
def test_a_location_with_control_characters_is_refused_quoted(tmp_path, capsys, value):
    assert main(run_args(tmp_path, f"OutputPrefix={value}")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --param OutputPrefix=")
    assert err.endswith(f"OutputPrefix must be an s3:// URI, a file:// URI or a path with no trailing '/', without "
                        f"control characters, got {value!r}; pass --param OutputPrefix=<value> of that form\n")


def test_a_file_name_with_a_newline_cannot_forge_an_error_line(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a\nerror: all good.txt").write_text("x")
    assert main(run_args(tmp_path, f"InputData={folder}", f"OutputPrefix={tmp_path / 'out'}")) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert lines[-1].startswith("error: step Preprocess, host algo-1 failed: preprocess: a error: all good.txt: "
                                "unsupported file type '.txt'")


def test_every_printed_line_escapes_control_and_format_characters():
    assert printable("a\nerror: b\r\x1b[31m\u202ec\td") == "a\\nerror: b\\r\\x1b[31m\\u202ec\\td"
    assert printable("é ü 日本 ok") == "é ü 日本 ok"


def test_instance_count_over_the_local_limit_is_refused_with_the_fix(tmp_path, capsys):
    assert main(run_args(tmp_path, "InstanceCount=1000")) == 2
    assert capsys.readouterr().err == (
        "error: --param InstanceCount=1000: InstanceCount must be an integer between 1 and 64, got 1000 (the number "
        "of similarity hosts; a local run starts one process per host on this machine, so at most 64: run more "
        "hosts in the cloud (python -m pipeline start)); pass --param InstanceCount=<value> within that range\n")
    assert not (tmp_path / "work").exists()


def test_the_runner_refuses_a_definition_asking_for_more_local_hosts_than_its_limit(tmp_path):
    from pipeline import api

    spec, text = api.load(REPO / "pipeline.yaml")
    with pytest.raises(LocalRunError) as info:
        run_local(text, {"InstanceCount": 65, "InputData": str(REPO / "data/sample/embeddings.parquet"),
                         "OutputPrefix": str(tmp_path / "out")}, workdir=tmp_path / "work", pipeline_name="p")
    assert str(info.value).startswith("step Similarity: ResourceConfig.InstanceCount is 65; a local run starts one "
                                      "process per host, at most 64 (set --param InstanceCount=N, or run it in the "
                                      "cloud)")


def test_min_score_one_keeps_every_exact_duplicate_and_inter_container_encryption_runs_locally(tmp_path):
    """Two identical stored rows score exactly 1.0, so MinScore=1.0 keeps each duplicate (and nothing else)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 16)).astype(np.float32)
    for a, b in [(5, 17), (5, 90), (33, 34), (60, 119)]:
        X[b] = X[a]
    X[70] = 3 * X[33]  # a positive multiple: identical once normalized
    np.save(tmp_path / "X.npy", X)
    spec = tmp_path / "pipeline.yaml"
    spec.write_text((REPO / "pipeline.yaml").read_text().replace("encrypt_inter_container_traffic: false",
                                                                 "encrypt_inter_container_traffic: true"))
    out = tmp_path / "out"
    assert main(run_args(tmp_path, f"InputData={tmp_path / 'X.npy'}", f"OutputPrefix={out}", "InstanceCount=3",
                         "TopK=3", "MinScore=1.0", spec=spec)) == 0
    (artifact,) = out.glob("*/artifact")
    neighbors, scores = np.load(artifact / "neighbors.npy"), np.load(artifact / "scores.npy")
    bn, bs = brute_force(normalize(X), 3, min_score=1.0)
    assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)
    groups = [{5, 17, 90}, {33, 34, 70}, {60, 119}]
    for group in groups:
        for row in group:
            assert set(neighbors[row][neighbors[row] >= 0]) == group - {row}
            assert (scores[row][neighbors[row] >= 0] == 1.0).all()
    assert json.loads((artifact / "manifest.json").read_text())["counts"]["pairs"] == sum(
        len(g) * (len(g) - 1) for g in groups)
