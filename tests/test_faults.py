"""Fault injection through the local runner (ALLPAIRS_FAULTS): hosts killed mid-run and restarted as spot
restarts them; the artifact must be byte-identical to an uninterrupted run's."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import LocalRunError, UsageError
from pipeline.local.faults import Fault, host_faults, parse_faults
from pipeline.definition.graph import StepPlan
from steps.contract import BLOCK_ROWS_ENV, PROGRESS_LINE
from steps.formats.registry import list_local

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Grids of 50-row blocks (the hosts read ALLPAIRS_BLOCK_ROWS): 600 rows make 12 blocks, 4 per host of 3."""
    monkeypatch.setenv(BLOCK_ROWS_ENV, "50")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """600 rows in chunks of 50, a checkpoint after every step of a pass (of 9 or 10 steps)."""
    folder = tmp_path_factory.mktemp("faults")
    X = np.random.default_rng(11).standard_normal((600, 6)).astype(np.float32)
    X[10] = X[590]
    X[300] = 0
    np.save(folder / "X.npy", X)
    spec = folder / "pipeline.yaml"
    text = (REPO / "pipeline.yaml").read_text().replace("chunk_rows: 65536", "chunk_rows: 50").replace(
        "checkpoint_seconds: 120", "checkpoint_seconds: 0")
    assert "chunk_rows: 50" in text and "checkpoint_seconds: 0" in text
    spec.write_text(text)
    return folder / "X.npy", spec


def run(tmp_path, setup, monkeypatch, faults="", hosts=3, k=4):
    data, spec = setup
    monkeypatch.setenv("ALLPAIRS_FAULTS", faults)
    out = tmp_path / "out"
    code = main(["run", "--spec", str(spec), "--workdir", str(tmp_path / "work"), "--param", f"InputData={data}",
                 "--param", f"OutputPrefix={out}", "--param", f"InstanceCount={hosts}", "--param", f"TopK={k}"])
    assert code == 0
    (artifact,) = out.glob("*/artifact")
    (record,) = (tmp_path / "work/executions").glob("*/execution.json")
    return artifact, json.loads(record.read_text())


def digest(artifact: Path) -> str:
    return hashlib.sha256(b"".join((artifact / name).read_bytes()
                                   for name in ("neighbors.npy", "scores.npy", "neighbors.parquet"))).hexdigest()


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BLOCK_ROWS_ENV, "50")
        artifact, _ = run(tmp_path_factory.mktemp("ref"), setup, mp)
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
    killed = log.index("algo-2: fault injected: killed after checkpoint 2 (pass of block rows [4, 8): 2 of 9 steps "
                       "done); sending SIGKILL to this host")
    assert log[killed + 1] == "--- Similarity algo-2: restarted after an injected fault, as spot restarts it ---"
    assert log[killed + 2] == "algo-2: resuming the pass of block rows [4, 8) from checkpoints: 2 of 9 steps done"
    assert log[-2] == "algo-2: checkpoint: pass of block rows [4, 8): done"
    # Its own 4 blocks (200 rows) and the 5 mirror lists of the column blocks outside them (250 rows).
    assert log[-1].startswith("algo-2: 9 partial lists (450 rows) done in")
    assert log[-1].endswith("(2 steps resumed from checkpoints)")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["counts"]["zero_rows"] == 1


def test_whole_step_killed_during_a_checkpoint_write_restarts_and_discards_the_torn_file(
        tmp_path, setup, monkeypatch, reference):
    artifact, record = run(tmp_path, setup, monkeypatch, "Similarity:*:during-checkpoint=2")
    assert digest(artifact) == reference
    hosts = record["steps"][1]["hosts"]
    assert [hosts[h].get("restarts") for h in ("algo-1", "algo-2", "algo-3")] == [1, 1, 1]
    log = log_of(record, "algo-1").splitlines()
    killed = next(i for i, line in enumerate(log) if line.startswith("algo-1: fault injected: killed while writing "
                                                                      "checkpoint 2 (rows-"))
    assert log[killed + 2].startswith("algo-1: discarding partial checkpoint write .rows-000000000000-000000000200.")
    assert log[killed + 2].endswith(" (its writer was killed)")
    assert log[killed + 3] == "algo-1: resuming the pass of block rows [0, 4) from checkpoints: 1 of 10 steps done"
    checkpoints = next(artifact.parent.glob("checkpoints"))
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]
    # One state per pass (named by its rows, replaced in place), each saying its pass is done.
    states = {p.name.split(".")[0]: json.loads(p.read_bytes().split(b"\n")[1]) for p in checkpoints.glob("rows-*")}
    assert sorted(states) == ["rows-000000000000-000000000200", "rows-000000000200-000000000400",
                              "rows-000000000400-000000000600"]
    assert all(header["done"] for header in states.values())


# ---- stops at arbitrary moments, delivered from outside as SageMaker delivers them ------------------------------


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """Enough work that a stop lands mid-share: 2 hosts x 15,000 rows of 30,000 x 128 (59 blocks of 512 rows);
    checkpoints only when stopped (checkpoint_seconds 3600), a progress line per step (for at=P%)."""
    folder = tmp_path_factory.mktemp("busy")
    np.save(folder / "X.npy", np.random.default_rng(3).standard_normal((30000, 128)).astype(np.float32))
    text = (REPO / "pipeline.yaml").read_text().replace("chunk_rows: 65536", "chunk_rows: 500").replace(
        "checkpoint_seconds: 120", "checkpoint_seconds: 3600")
    (folder / "pipeline.yaml").write_text(text)
    return folder / "X.npy", folder / "pipeline.yaml"


def run_busy(tmp_path, busy, monkeypatch, faults="", checkpoint_seconds=None, block=None):
    data, spec = busy
    if checkpoint_seconds is not None:
        spec = tmp_path / "pipeline.yaml"
        spec.write_text(busy[1].read_text().replace("checkpoint_seconds: 3600",
                                                    f"checkpoint_seconds: {checkpoint_seconds}"))
    monkeypatch.setenv("ALLPAIRS_PROGRESS_SECONDS", "0")
    if block:  # the artifact does not depend on the grid
        monkeypatch.setenv(BLOCK_ROWS_ENV, str(block))
    else:
        monkeypatch.delenv(BLOCK_ROWS_ENV, raising=False)
    return run(tmp_path, (data, spec), monkeypatch, faults, hosts=2, k=5)


@pytest.fixture(scope="module")
def busy_reference(busy, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        artifact, _ = run_busy(tmp_path_factory.mktemp("busy-ref"), busy, mp)
    return digest(artifact)


def lives(record: dict, host: str) -> list[list[str]]:
    """The host's log, one list of lines per start (the runner marks each restart)."""
    parts = [[]]
    for line in log_of(record, host).splitlines():
        if line.endswith("restarted after an injected fault, as spot restarts it ---"):
            parts.append([])
        else:
            parts[-1].append(line)
    return parts


def rows_reported(lines: list[str], before: str) -> int:
    """Rows of the share the host said were done, in its progress lines before the line containing `before`."""
    done = 0
    for line in lines:
        if before in line:
            return done
        found = PROGRESS_LINE.search(line)
        if found:
            done = int(found["done"])
    raise AssertionError(f"no line with {before!r}")


def share_rows(lines: list[str]) -> int:
    """The rows of the host's share, as its progress lines count them."""
    return max(int(found["total"]) for found in map(PROGRESS_LINE.search, lines) if found)


PASS_PROGRESS = r"(\d+) of (\d+) steps done(?:, and (\d+) of (\d+) products of the next)?"


def resumed(lines: list[str]) -> tuple[int, ...]:
    """(steps done, steps, products done, products) the restarted host says it resumed its pass from."""
    (found,) = re.findall(r"resuming the pass of block rows \[\d+, \d+\) from checkpoints: " + PASS_PROGRESS,
                          "\n".join(lines))
    return tuple(int(x) if x else 0 for x in found)


# Block rows 5000: algo-2 takes 5 steps of ~0.5 s (the signal at 22.8% lands in its second or third, inside it).
@pytest.mark.parametrize("seed,block", [(1, None), (3, 5000)])
def test_sigterm_at_a_random_share_checkpoints_everything_computed_and_the_resumed_artifact_is_identical(
        tmp_path, busy, busy_reference, monkeypatch, seed, block):
    percent = random.Random(seed).uniform(8, 70)
    artifact, record = run_busy(tmp_path, busy, monkeypatch, f"Similarity:algo-2:at={percent:.1f}%", block=block)
    assert digest(artifact) == busy_reference
    first, second = lives(record, "algo-2")
    stop = next(line for line in first if "stopped by SIGTERM" in line)
    saved = tuple(int(x) if x else 0 for x in re.search(PASS_PROGRESS + r"; all of it is in checkpoints", stop).groups())
    steps_done, steps = saved[:2]
    reported = rows_reported(first, "SIGTERM from the runner")
    total = share_rows(first)
    # Every step the host had finished when the signal came is saved (checkpoint_seconds 3600: by the stop alone),
    # and the products of the step under way that were done; the host exited on its own within the grace
    # period (no SIGKILL), and the restart resumed exactly there, computing only the rest.
    assert percent / 100 * total <= reported <= total * steps_done // steps and steps_done < steps
    assert not any("SIGKILL" in line for line in first)
    assert resumed(second) == saved
    assert second[-1].endswith(f"({steps_done} steps resumed from checkpoints)")
    if block:
        assert saved[3] > 0, stop  # paused inside a step: the products done so far were kept too


def test_sigkill_at_a_random_moment_loses_at_most_the_rows_since_the_last_checkpoint(
        tmp_path, busy, busy_reference, monkeypatch):
    seconds = random.Random(7).uniform(1.0, 2.5)
    artifact, record = run_busy(tmp_path, busy, monkeypatch, f"Similarity:algo-1:at={seconds:.2f}s;signal=KILL",
                                checkpoint_seconds=0)
    assert digest(artifact) == busy_reference
    first, second = lives(record, "algo-1")
    assert record["steps"][1]["hosts"]["algo-1"]["restarts"] == 1
    # checkpoint_seconds 0: a step is checkpointed before its progress line, so nothing reported is lost.
    reported = rows_reported(first, "SIGKILL from the runner")
    if not any(": checkpoint: " in line for line in first):
        # On a busy machine the kill can land while the host is still starting: nothing was saved or reported,
        # and the restart starts afresh.
        assert reported == 0 and not any("resuming" in line for line in second), first
        return
    steps_done, steps = resumed(second)[:2]
    total = share_rows(first + second)
    assert 0 < steps_done and reported <= total * steps_done // steps


def test_a_malformed_fault_is_refused_before_anything_runs(tmp_path, setup, monkeypatch, capsys):
    data, spec = setup
    monkeypatch.setenv("ALLPAIRS_FAULTS", "Similarity:algo-2:after=2")
    code = main(["run", "--spec", str(spec), "--workdir", str(tmp_path / "w"), "--param", f"InputData={data}",
                 "--param", f"OutputPrefix={tmp_path / 'out'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: ALLPAIRS_FAULTS: 'Similarity:algo-2:after=2' is not STEP:HOST:CONDITION; for example "
        "Similarity:algo-2:at=3.5s, Similarity:algo-1:at=40%;signal=KILL or Similarity:*:during-checkpoint=1;signal=TERM")
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


# ---- Ctrl-C, resume, concurrent runs -------------------------------------------------------------------------


def start_cli(tmp_path, setup, workdir, out, faults=""):
    data, spec = setup
    env = {**os.environ, "ALLPAIRS_FAULTS": faults}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--spec", str(spec), "--workdir", str(workdir),
         "--param", f"InputData={data}", "--param", f"OutputPrefix={out}", "--param", "InstanceCount=3",
         "--param", "TopK=4"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_ctrl_c_stops_the_hosts_publishes_nothing_and_the_execution_resumes_to_the_same_artifact(
        tmp_path, setup, reference, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    # algo-2 stalls after its first checkpoint, so the interrupt lands while Similarity is running.
    proc = start_cli(tmp_path, setup, work, out, "Similarity:algo-2:hang-after-checkpoints=1")
    logs = lambda: list(work.glob("executions/*/Similarity/algo-2/job.log"))  # noqa: E731
    wait_for(lambda: logs() and "fault injected" in logs()[0].read_text())
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (record_path,) = work.glob("executions/*/execution.json")
    record = json.loads(record_path.read_text())
    execution_id = record["id"]
    lines = stderr.strip().splitlines()
    assert lines[-2] == (f"execution {execution_id}: Stopped; nothing was published or registered. Resume it with: "
                         f"python -m pipeline run --resume {execution_id} --workdir {work} (finished steps are kept; "
                         "Similarity resumes from its checkpoints)")
    assert lines[-1] == "error: interrupted"
    assert record["status"] == "Stopped"
    assert [s["status"] for s in record["steps"]] == ["Succeeded", "Stopped", "NotStarted", "NotStarted"]
    hosts = record["steps"][1]["hosts"]
    assert {h["reason"] for h in hosts.values()} <= {"stopped: the run was interrupted", ""}
    assert not list(out.glob("*/artifact")) and not list(out.glob("*/.*partial*"))
    assert not (work / "registry.sqlite").exists()
    hung = Path(hosts["algo-2"]["log"]).read_text().splitlines()
    assert hung[-1] == ("similarity: stopped by SIGTERM; stalled after checkpoint 1 (pass of block rows [4, 8): 1 of "
                        "9 steps done) by an injected fault")
    assert list(out.glob(f"{execution_id}/checkpoints/rows-000000000200-000000000400.*.ckpt"))  # work so far kept

    monkeypatch.delenv("ALLPAIRS_FAULTS", raising=False)
    capsys.readouterr()
    # The command the interrupted run printed, through the real CLI entry point, from a folder with no spec.
    monkeypatch.chdir(tmp_path)
    resume = ["run", "--resume", execution_id, "--workdir", str(work)]
    assert main(resume) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[:2] == [f"execution {execution_id}: {record_path.parent} (resumed)",
                                             "Preprocess: Succeeded before, skipped"]
    (artifact,) = out.glob(f"{execution_id}/artifact")
    assert f"artifact: {artifact}" in captured.out.splitlines()
    assert digest(artifact) == reference
    assert (record_path.parent / "Similarity.attempt-1/algo-2/job.log").exists()  # the attempt before is kept
    resumed_log = (record_path.parent / "Similarity/algo-2/job.log").read_text()
    assert "algo-2: resuming the pass of block rows [4, 8) from checkpoints: 1 of 9 steps done" in resumed_log
    assert [e["version"] for e in list_local(work / "registry.sqlite")] == [1]
    assert main(resume) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {execution_id}: that execution already Succeeded; nothing to resume "
        "(start a new run for new results)")
    assert main(resume + ["--param", "TopK=3"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {execution_id} takes the parameters the execution started with; drop --param "
        "(or start a new run without --resume)")


def test_two_runs_at_once_with_one_output_prefix_do_not_interfere(tmp_path, setup, reference):
    work, out = tmp_path / "work", tmp_path / "out"
    procs = [start_cli(tmp_path, setup, work, out) for _ in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    artifacts = sorted(out.glob("*/artifact"))
    assert len(artifacts) == 2 and all(digest(a) == reference for a in artifacts)
    entries = list_local(work / "registry.sqlite")
    assert sorted(e["version"] for e in entries) == [1, 2]
    assert {e["metadata"]["execution_id"] for e in entries} == {a.parent.name for a in artifacts}


def test_one_execution_cannot_be_run_by_two_processes(tmp_path):
    from pipeline.local.execution import LOCK_FILE, Execution, execution_lock

    directory = tmp_path / "executions/local-x"
    directory.mkdir(parents=True)
    execution = Execution("local-x", "p", directory, tmp_path, {}, "now", {})
    with execution_lock(execution):
        with pytest.raises(LocalRunError) as info:
            with execution_lock(execution):
                pass
    assert str(info.value) == (f"execution local-x is being run by another process (lock {directory / LOCK_FILE}); "
                               "wait for it to end or stop it first")
