"""The commands around the artifact: `neighbors` (a path, S3 through moto, a registry entry) against brute force,
`registry list|show|approve|reject` (local, and --cloud against moto), `clean` (removes only what it lists),
`--version`, and `run --resume` from another directory; the README's Python snippet, run as written."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from pipeline.cli import main
from tests.brute import brute_force, normalize

REPO = Path(__file__).resolve().parents[1]


def run(tmp_path, data, workdir, *params):
    """A local run, in process; returns the artifact folder."""
    out = tmp_path / "out"
    args = ["run", "--spec", str(REPO / "pipeline.yaml"), "--workdir", str(workdir), "--param", f"InputData={data}",
            "--param", f"OutputPrefix={out}", "--param", "InstanceCount=2", "--param", "TopK=4", *params]
    assert main(args) == 0
    return sorted(out.glob("*/artifact"), key=lambda p: p.stat().st_mtime)[-1]


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """50 x 6 with string ids (two identical rows) and 40 x 3 with row-number ids, each run once."""
    folder = tmp_path_factory.mktemp("items")
    rng = np.random.default_rng(21)
    X = rng.standard_normal((50, 6)).astype(np.float32)
    X[12] = X[40]
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    frame.insert(0, "sku", [f"sku {i:02d}" for i in range(50)])  # a space: ids are not shell words
    frame.to_parquet(folder / "items.parquet")
    Y = rng.standard_normal((40, 3)).astype(np.float32)
    np.save(folder / "y.npy", Y)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("ALLPAIRS_PROGRESS_SECONDS", "60")
        strings = run(folder / "s", folder / "items.parquet", folder / "work")
        numbers = run(folder / "n", folder / "y.npy", folder / "work")
    finally:
        mp.undo()
    return {"X": X, "strings": strings, "Y": Y, "numbers": numbers, "work": folder / "work"}


def expected(X, row, k=4):
    bn, bs = brute_force(normalize(X), k)
    return bn[row], bs[row]


def cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_neighbors_in_every_format_match_brute_force(items, capsys):
    X, artifact = items["X"], str(items["strings"])
    bn, bs = expected(X, 12)
    code, out, _ = cli(capsys, "neighbors", artifact, "sku 12", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["neighbor_id"] for r in rows] == [f"sku {j:02d}" for j in bn] and rows[0]["neighbor_id"] == "sku 40"
    assert [np.float32(r["score"]) for r in rows] == bs.tolist()  # the text reads back to the very float32
    code, out, _ = cli(capsys, "neighbors", artifact, "sku 12", "sku 03", "--k", "2", "--format", "json")
    records = json.loads(out)
    assert [(r["id"], r["rank"]) for r in records] == [("sku 12", 1), ("sku 12", 2), ("sku 03", 1), ("sku 03", 2)]
    assert [r["neighbor_id"] for r in records[2:]] == [f"sku {j:02d}" for j in expected(X, 3)[0][:2]]
    code, out, _ = cli(capsys, "neighbors", artifact, "sku 12", "--k", "1")
    assert out.splitlines() == ["id      neighbor_id  rank  score", "sku 12  sku 40          1    1.0"]

    Y, numbers = items["Y"], str(items["numbers"])
    code, out, _ = cli(capsys, "neighbors", numbers, "7", "--format", "csv")
    assert [int(r["neighbor_id"]) for r in csv.DictReader(io.StringIO(out))] == expected(Y, 7)[0].tolist()


def test_neighbors_errors_say_what_and_exit_2(items, capsys, tmp_path):
    artifact = items["strings"]
    assert cli(capsys, "neighbors", str(artifact), "sku 99")[:3:2] == (
        2, f"error: id 'sku 99' is not in {artifact} (50 rows, ids from column sku); check the id\n")
    assert cli(capsys, "neighbors", str(items["numbers"]), "seven")[:3:2] == (
        2, f"error: id 'seven': the ids of {items['numbers']} are integers (row number)\n")
    assert cli(capsys, "neighbors", str(artifact), "sku 12", "--k", "9")[:3:2] == (
        2, f"error: k=9: {artifact} holds 4 neighbours per row; ask for 1 to 4\n")
    assert cli(capsys, "neighbors", str(tmp_path), "sku 12")[:3:2] == (
        2, f"error: {tmp_path}: no artifact there (no manifest.json); pass an artifact folder, as a run prints it "
           "(`artifact: ...`), or a registry entry\n")
    (tmp_path / "manifest.json").write_text("{not json")
    assert cli(capsys, "neighbors", str(tmp_path), "sku 12")[:3:2] == (
        1, f"error: {tmp_path}/manifest.json: cannot read it (Expecting property name enclosed in double quotes: "
           "line 1 column 2 (char 1))\n")


@pytest.fixture
def moto_env(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def test_neighbors_from_s3_and_from_registry_entries(items, capsys, moto_env):
    artifact, work = items["strings"], items["work"]
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="team")
    for file in artifact.iterdir():
        s3.upload_file(str(file), "team", f"runs/{artifact.parent.name}/artifact/{file.name}")
    bn, _ = expected(items["X"], 5)
    want = [f"sku {j:02d}" for j in bn]
    for location in (f"s3://team/runs/{artifact.parent.name}/artifact", f"s3://team/runs/{artifact.parent.name}"):
        code, out, err = cli(capsys, "neighbors", location, "sku 05", "--format", "json")
        assert code == 0, err
        assert [r["neighbor_id"] for r in json.loads(out)] == want
    entry = json.loads((artifact / "registration.json").read_text())["model_package_arn"]
    code, out, _ = cli(capsys, "neighbors", entry, "sku 05", "--format", "json", "--workdir", str(work))
    assert [r["neighbor_id"] for r in json.loads(out)] == want


def test_local_registry_list_show_approve_reject(items, capsys):
    work = ["--workdir", str(items["work"])]
    code, out, _ = cli(capsys, "registry", "list", *work)
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["model_package_group"], e["version"], e["approval_status"]) for e in entries] == [
        ("allpairs-similarity", 1, "PendingManualApproval"), ("allpairs-similarity", 2, "PendingManualApproval")]
    assert entries[0]["metadata"]["artifact_uri"] == str(items["strings"])
    code, out, _ = cli(capsys, "registry", "show", "2", *work)
    assert json.loads(out) == entries[1]
    assert cli(capsys, "registry", "approve", "allpairs-similarity/1", *work)[1] == (
        "local:model-package/allpairs-similarity/1: Approved (was PendingManualApproval)\n")
    assert cli(capsys, "registry", "reject", "local:model-package/allpairs-similarity/1", *work)[1] == (
        "local:model-package/allpairs-similarity/1: Rejected (was Approved)\n")
    assert json.loads(cli(capsys, "registry", "show", "1", *work)[1])["approval_status"] == "Rejected"
    assert cli(capsys, "registry", "approve", "7", *work)[:3:2] == (
        2, f"error: 7: no such entry in the local registry {items['work'] / 'registry.sqlite'} "
           "(local:model-package/allpairs-similarity/7); list them with `python -m pipeline registry list`\n")
    assert cli(capsys, "registry", "show", *work)[:3:2] == (
        2, "error: registry show needs an entry: its ARN, GROUP/VERSION or VERSION (`python -m pipeline registry "
           "list` shows them)\n")


def test_cloud_registry_list_show_approve_reject(capsys, moto_env):
    from steps import registry

    first = registry.register("sim", "PendingManualApproval", "first", {"artifact_uri": "s3://b/1/artifact"}, "t1")
    registry.register("sim", "PendingManualApproval", "second", {"artifact_uri": "s3://b/2/artifact"}, "t2")
    spec = ["--spec", str(REPO / "pipeline.yaml"), "--cloud", "--group", "sim"]
    code, out, err = cli(capsys, "registry", "list", *spec)
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(e["version"], e["approval_status"]) for e in listed] == [(1, "PendingManualApproval"),
                                                                      (2, "PendingManualApproval")]
    shown = json.loads(cli(capsys, "registry", "show", "1", *spec)[1])
    assert shown["model_package_arn"] == first["model_package_arn"]
    assert shown["metadata"] == {"artifact_uri": "s3://b/1/artifact"}
    assert cli(capsys, "registry", "approve", "sim/2", *spec)[1] == (
        f"{first['model_package_arn'][:-1]}2: Approved (was PendingManualApproval)\n")
    described = boto3.client("sagemaker").describe_model_package(ModelPackageName=first["model_package_arn"][:-1] + "2")
    assert described["ModelApprovalStatus"] == "Approved"
    assert cli(capsys, "registry", "reject", first["model_package_arn"], *spec)[1] == (
        f"{first['model_package_arn']}: Rejected (was PendingManualApproval)\n")
    assert cli(capsys, "registry", "show", "9", *spec)[:3:2] == (
        2, "error: 9: no version 9 in the model package group sim (us-east-1); list them with `python -m pipeline "
           "registry list --cloud`\n")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"allpairs \d+\.\d+\.\d+ \(artifact format allpairs\.artifact version 2\)\n",
                        capsys.readouterr().out)


def test_the_readme_snippet_runs_as_written(items, monkeypatch, capsys):
    """The README's Python block, with its artifact path replaced by a real one."""
    text = (REPO / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert '"s3://my-bucket/allpairs/runs/<execution id>/artifact"' in snippet
    code = snippet.replace('"s3://my-bucket/allpairs/runs/<execution id>/artifact"', repr(str(items["strings"])))
    code = code.replace('"item-00001"', '"sku 12"').replace('"item-00002"', '"sku 03"')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    bn, _ = expected(items["X"], 12)
    assert namespace["frame"]["neighbor_id"].tolist() == [f"sku {j:02d}" for j in bn]


# ---- clean ------------------------------------------------------------------------------------------------------


def age(execution: Path, days: float) -> None:
    """Make an execution look as if it ended `days` ago (its record is what clean reads)."""
    record_path = execution / "execution.json"
    record = json.loads(record_path.read_text())
    record["ended"] = (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    record_path.write_text(json.dumps(record))


def du(path: Path) -> float:
    """MB of the files under `path`, links not followed (the staged inputs are links to the user's data)."""
    return sum(os.lstat(os.path.join(root, f)).st_size for root, _, files in os.walk(path) for f in files) / 1e6


def test_clean_removes_only_what_it_lists(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALLPAIRS_PROGRESS_SECONDS", "60")
    work, data = tmp_path / "work", tmp_path / "x.npy"
    np.save(data, np.random.default_rng(22).standard_normal((30, 4)).astype(np.float32))
    made = [run(tmp_path, data, work).parent.name for _ in range(3)]  # three executions, each registered
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((3, 2), np.nan))
    assert main(["run", "--spec", str(REPO / "pipeline.yaml"), "--workdir", str(work), "--param", f"InputData={bad}",
                 "--param",
                 f"OutputPrefix={tmp_path / 'out'}"]) == 1  # failed in Preprocess: never registered
    (failed,) = {p.name for p in (work / "executions").iterdir()} - set(made)
    old_registered, old_unregistered, old_running = made
    with sqlite3.connect(work / "registry.sqlite") as con:  # as if its Register had failed
        con.execute("DELETE FROM model_packages WHERE arn = ?", ("local:model-package/allpairs-similarity/2",))
    for name, days in ((old_registered, 12), (old_unregistered, 11), (old_running, 10)):
        age(work / "executions" / name, days)
    capsys.readouterr()
    executions, out = work / "executions", tmp_path / "out"
    sizes = {name: du(executions / name) + du(out / name) for name in made}
    assert not (out / failed).exists()  # Preprocess failed: nothing was published

    with open(executions / old_running / ".lock", "a") as lock:  # a run or resume in progress holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, listing, _ = cli(capsys, "clean", "--older-than", "7d", "--workdir", str(work))
        assert code == 0
        assert listing.splitlines() == [
            f"kept {old_registered} (Succeeded): registered as local:model-package/allpairs-similarity/1 "
            "(--registered-too removes it as well)",
            f"would remove {old_unregistered} (Succeeded, 11 days old; not registered): "
            f"{sizes[old_unregistered]:.1f} MB",
            f"  {executions / old_unregistered}",
            f"  {out / old_unregistered}",
            f"kept {old_running} (Succeeded): registered as local:model-package/allpairs-similarity/3 "
            "(--registered-too removes it as well)",
            f"would remove 1 execution, {sizes[old_unregistered]:.1f} MB; run again with --force to remove them",
        ]
        assert {p.name for p in executions.iterdir()} == set(made) | {failed}  # a dry run removes nothing

        code, listing, _ = cli(capsys, "clean", "--older-than", "7d", "--registered-too", "--force", "--workdir",
                               str(work))
        assert listing.splitlines() == [
            f"removed {old_registered} (Succeeded, 12 days old): {sizes[old_registered]:.1f} MB",
            f"  {executions / old_registered}",
            f"  {out / old_registered}",
            f"removed {old_unregistered} (Succeeded, 11 days old; not registered): {sizes[old_unregistered]:.1f} MB",
            f"  {executions / old_unregistered}",
            f"  {out / old_unregistered}",
            f"kept {old_running} (Succeeded): running (another process holds its lock)",
            f"removed 2 executions, {sizes[old_registered] + sizes[old_unregistered]:.1f} MB",
        ]
        assert {p.name for p in executions.iterdir()} == {old_running, failed}  # failed: not old
        assert {p.name for p in out.iterdir()} == {old_running}
        assert (out / old_running / "artifact/manifest.json").exists()
        assert data.exists() and bad.exists()  # the inputs the executions linked to are the user's: never followed

    failed_size = du(executions / failed)
    code, listing, _ = cli(capsys, "clean", "--unregistered", "--force", "--workdir", str(work))
    assert listing.splitlines() == [f"removed {failed} (Failed, not registered): {failed_size:.1f} MB",
                                    f"  {executions / failed}", f"removed 1 execution, {failed_size:.1f} MB"]
    assert {p.name for p in executions.iterdir()} == {old_running}  # registered: --unregistered never selects it
    assert cli(capsys, "clean", "--unregistered", "--workdir", str(work))[1] == "nothing to remove\n"
    assert cli(capsys, "clean", "--workdir", str(work))[:3:2] == (
        2, "error: clean: say which executions: --older-than AGE (e.g. 7d), --unregistered, or both\n")
    assert cli(capsys, "clean", "--older-than", "a week", "--workdir", str(work))[:3:2] == (
        2, "error: --older-than a week: expected a number and a unit (s, m, h, d, w), e.g. 7d or 12h\n")


# ---- resume from anywhere --------------------------------------------------------------------------------------


def test_resume_from_another_directory_finds_the_executions_relative_paths(tmp_path, monkeypatch, capsys):
    """Relative --param paths are made absolute once, at the command line: a resume started elsewhere reads and
    writes where the first run did."""
    first, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    first.mkdir(), elsewhere.mkdir()
    np.save(first / "X.npy", np.random.default_rng(23).standard_normal((300, 6)).astype(np.float32))
    spec = tmp_path / "pipeline.yaml"
    text = (REPO / "pipeline.yaml").read_text().replace("chunk_rows: 65536", "chunk_rows: 50").replace(
        "checkpoint_seconds: 120", "checkpoint_seconds: 0")
    spec.write_text(text)
    work = tmp_path / "work"
    env = {**os.environ, "ALLPAIRS_FAULTS": "Similarity:algo-1:hang-after-checkpoints=1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--spec", str(spec), "--workdir", str(work),
                             "--param", "InputData=X.npy", "--param", "OutputPrefix=out", "--param", "InstanceCount=1",
                             "--param", "TopK=3"], cwd=first, env={**env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from tests.test_faults import wait_for

        log = lambda: list(work.glob("executions/*/Similarity/algo-1/job.log"))  # noqa: E731
        wait_for(lambda: log() and "fault injected" in log()[0].read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    (record,) = work.glob("executions/*/execution.json")
    execution_id = json.loads(record.read_text())["id"]
    parameters = json.loads(record.read_text())["parameters"]
    assert (parameters["InputData"], parameters["OutputPrefix"]) == (str(first / "X.npy"), str(first / "out"))

    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("ALLPAIRS_FAULTS", raising=False)
    assert main(["run", "--resume", execution_id, "--workdir", str(work)]) == 0
    assert f"artifact: {first / 'out' / execution_id / 'artifact'}" in capsys.readouterr().out
    assert not list(elsewhere.iterdir())  # nothing written relative to where the resume ran
