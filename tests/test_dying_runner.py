"""A runner that dies or is told to stop (issue 11): SIGTERM and SIGHUP get what Ctrl-C gets, hosts die with
their runner, the execution lock outlives the runner while a host still runs, kill -9 of the whole process
tree at the worst moments of publishing and registering converges on resume to one registry entry whose
artifact is complete; an execution id is a name, never a path; a damaged record refuses to resume."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import LocalRunError
from pipeline.local import execution as local_execution
from pipeline.local.hosts import HostCommand, die_with_runner, start
from pipeline.local.lock import ExecutionLock, running
from steps.formats import artifact as artifact_format
from steps.formats.registry import list_local
from tests.test_faults import digest, reference, setup, small_blocks, wait_for  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")


def launch(setup, work, out, *params, faults="", env=None):
    """`python -m pipeline run` in its own session, as a terminal or CI would start it."""
    data, spec = setup
    argv = [sys.executable, "-m", "pipeline", "run", "--spec", str(spec), "--workdir", str(work),
            "--param", f"InputData={data}", "--param", f"OutputPrefix={out}", "--param", "TopK=4", *params]
    return subprocess.Popen(argv, cwd=REPO, env={**os.environ, "ALLPAIRS_FAULTS": faults, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def record_of(work: Path) -> dict:
    (path,) = work.glob("executions/*/execution.json")
    return json.loads(path.read_text())


def host_pids(work: Path) -> dict[str, int]:
    """label -> pid of every host the lock file lists (the runner notes each host as it starts it)."""
    (lock,) = work.glob("executions/*/.lock")
    pairs = [line.split(" ", 1) for line in lock.read_text().splitlines()]
    return {label: int(pid) for pid, label in pairs if label != "runner"}


def hung_host_log(work: Path):
    logs = list(work.glob("executions/*/Similarity/algo-2/job.log"))
    return logs and "fault injected" in logs[0].read_text()


# ---- an execution id is a name ---------------------------------------------------------------------------------


@pytest.mark.parametrize("execution_id", ["../../elsewhere", "", ".", "..", "a/b", "/tmp", "x\n"])
def test_resume_refuses_an_execution_id_that_is_not_a_name(tmp_path, capsys, execution_id):
    # A record and a definition planted outside the workdir, whose entrypoint would leave a mark if it ran.
    planted = tmp_path / "elsewhere"
    planted.mkdir()
    (planted / "execution.json").write_text(json.dumps({"status": "Failed", "steps": []}))
    (planted / "definition.json").write_text(json.dumps({"Steps": [], "Parameters": []}))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    assert main(["run", "--resume", execution_id, "--workdir", str(work)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume {execution_id!r}: an execution id is a name like local-20261126T082450Z-e97f95 (letters, "
        "digits, '.', '_' and '-'), not a path; pass the id the run printed, and its run directory with --workdir\n")
    assert list(work.iterdir()) == []


@pytest.fixture(scope="module")
def failed_run(setup, tmp_path_factory):
    """A resumable execution: its Preprocess failed (no such input)."""
    data, spec = setup
    base = tmp_path_factory.mktemp("failed")
    assert main(["run", "--spec", str(spec), "--workdir", str(base / "work"), "--param",
                 f"InputData={base / 'none.npy'}", "--param", f"OutputPrefix={base / 'out'}"]) == 1
    return base / "work"


@pytest.mark.parametrize("damage, detail", [
    (lambda r: "{not json", None),
    (lambda r: json.dumps({**r, "steps": "Preprocess"}), "TypeError: string indices must be integers, not 'str'"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "parameters"}), "KeyError: 'parameters'"),
    (lambda r: json.dumps({**r, "version": 7}), "ValueError: format 'allpairs.local-execution' version 7"),
    (lambda r: json.dumps({**r, "steps": r["steps"][:2]}),
     "ValueError: its steps are not the steps of its definition.json"),
])
def test_a_damaged_execution_record_refuses_to_resume_in_one_line(tmp_path, failed_run, capsys, damage, detail):
    work = tmp_path / "work"
    shutil.copytree(failed_run, work, symlinks=True)
    (path,) = work.glob("executions/*/execution.json")
    path.write_text(damage(json.loads(path.read_text())))
    capsys.readouterr()
    execution_id = path.parent.name
    assert main(["run", "--resume", execution_id, "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    if detail is None:
        assert err.startswith(f"error: --resume {execution_id}: no readable execution record in {path.parent} "
                              "(JSONDecodeError: Expecting property name enclosed in double quotes")
    else:
        assert err == (f"error: --resume {execution_id}: {path} or definition.json is damaged ({detail}), so the "
                       "execution cannot be resumed; start a new run (its checkpoints are not reused)\n")
    assert len(err.splitlines()) == 1


# ---- signals to the runner ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_runner_as_ctrl_c_does(tmp_path, setup, reference, sig):  # noqa: F811
    """`timeout` sends SIGTERM, a closed terminal SIGHUP: the hosts are stopped (and checkpoint), nothing is
    published, the record says Stopped, and the resume finishes the same artifact."""
    work, out = tmp_path / "work", tmp_path / "out"
    proc = launch(setup, work, out, "--param", "InstanceCount=3", faults="Similarity:algo-2:hang-after-checkpoints=1")
    wait_for(lambda: hung_host_log(work))
    pids = host_pids(work)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, stderr
    record = record_of(work)
    lines = stderr.strip().splitlines()
    assert lines[-2].startswith(f"execution {record['id']}: Stopped; nothing was published or registered. Resume it")
    assert lines[-1] == f"error: stopped by {name}"
    assert record["status"] == "Stopped" and record["failure_reason"] == "interrupted"
    assert [s["status"] for s in record["steps"]] == ["Succeeded", "Stopped", "NotStarted", "NotStarted"]
    assert not any(running(pid) for pid in pids.values())
    hung = Path(record["steps"][1]["hosts"]["algo-2"]["log"]).read_text().splitlines()
    assert hung[-1] == ("similarity: stopped by SIGTERM; stalled after checkpoint 1 (pass of block rows [4, 8): 1 of "
                        "9 steps done) by an injected fault")
    assert not list(out.glob("*/artifact")) and not (work / "registry.sqlite").exists()
    if sig == signal.SIGTERM:  # the resume is the same whatever stopped the run (test_faults: after Ctrl-C)
        assert main(["run", "--resume", record["id"], "--workdir", str(work)]) == 0
        (artifact,) = out.glob("*/artifact")
        assert digest(artifact) == reference


# ---- a runner killed outright ------------------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_hosts_of_a_runner_killed_by_sigkill_are_stopped_and_the_resume_finishes(tmp_path, setup, reference):  # noqa: F811
    work, out = tmp_path / "work", tmp_path / "out"
    proc = launch(setup, work, out, "--param", "InstanceCount=3", faults="Similarity:algo-2:hang-after-checkpoints=1")
    wait_for(lambda: hung_host_log(work))
    pids = host_pids(work)
    proc.kill()  # the runner alone: its hosts are in sessions of their own
    proc.communicate(timeout=60)
    wait_for(lambda: not any(running(pid) for pid in pids.values()))  # the kernel's SIGTERM stopped them
    record = record_of(work)
    assert record["status"] == "Executing"  # nobody was left to write down the end
    hung = (work / "executions" / record["id"] / "Similarity/algo-2/job.log").read_text().splitlines()
    assert hung[-1] == ("similarity: stopped by SIGTERM; stalled after checkpoint 1 (pass of block rows [4, 8): 1 of "
                        "9 steps done) by an injected fault"), hung[-6:]
    assert not list(out.glob("*/artifact"))
    assert main(["run", "--resume", record["id"], "--workdir", str(work)]) == 0
    (artifact,) = out.glob("*/artifact")
    assert digest(artifact) == reference
    assert len(list_local(work / "registry.sqlite")) == 1


def test_the_execution_lock_outlives_the_runner_while_one_of_its_hosts_runs(tmp_path):
    """An orphan that ignores SIGTERM (or a platform without PR_SET_PDEATHSIG) keeps the execution locked: a
    resume is refused, naming the process, until the orphan has exited."""
    path = tmp_path / ".lock"
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
    lock = ExecutionLock(path, "local-x").acquire()
    host = start(HostCommand("algo-1", "Similarity algo-1", [sys.executable, "-c", code], dict(os.environ),
                             tmp_path / "algo-1", "output/failure"), tmp_path, None, lock)
    try:
        wait_for(lambda: "up" in (tmp_path / "algo-1/job.log").read_text())
        lock.release()  # the runner is gone
        with pytest.raises(LocalRunError) as info:
            ExecutionLock(path, "local-x").acquire()
        assert str(info.value) == (f"execution local-x is being run by another process (lock {path}, held by pid "
                                   f"{host.process.pid} (Similarity algo-1)); wait for it to end or stop it first")
    finally:
        host.process.kill()
        host.process.wait()
    ExecutionLock(path, "local-x").acquire().release()  # free once the last holder exited


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_a_host_whose_runner_is_gone_gets_sigterm(tmp_path):
    """The mechanism on its own: a 'runner' process starts a host with die_with_runner() and is SIGKILLed."""
    marker = tmp_path / "host-got"
    host = (f"import signal, time, pathlib; signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r})"
            ".write_text('SIGTERM'), exit(0))); print('up', flush=True); time.sleep(60)")
    runner = ("import subprocess, sys; from pipeline.local.hosts import die_with_runner; "
              f"p = subprocess.Popen([sys.executable, '-c', {host!r}], start_new_session=True, preexec_fn=die_with_runner(), "
              "stdout=subprocess.PIPE); p.stdout.readline(); print(p.pid, flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", runner], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    wait_for(lambda: marker.exists() and not running(child))
    assert marker.read_text() == "SIGTERM"
    assert die_with_runner() is not None


# ---- kill -9 of the whole tree at the worst moments ----------------------------------------------------------------

# Loaded by every Python process of the run (the runner and each host) through PYTHONPATH: SIGKILLs the whole
# process tree at one exact moment.
KILL_HOOK = '''
import os, signal
moment = os.environ.get("ALLPAIRS_TEST_KILL_AT")
if moment == "registry-commit":  # in Register, right after the registry's COMMIT: the host and its runner
    from steps.formats import registry
    real = registry.register_local
    def register_local(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    registry.register_local = register_local
elif moment:  # in the runner, right after a step's output is published, before the record says so
    from pipeline.local import jobs
    real_deliver = jobs.deliver_tree
    def deliver_tree(source, uri, where):
        real_deliver(source, uri, where)
        if where == moment:
            os.kill(os.getpid(), signal.SIGKILL)
    jobs.deliver_tree = deliver_tree
'''


def killed_at(moment, setup, work, out, hook, resume=None):
    env = {"ALLPAIRS_TEST_KILL_AT": moment, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    if resume:
        argv = [sys.executable, "-m", "pipeline", "run", "--resume", resume, "--workdir", str(work)]
        proc = subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    else:
        proc = launch(setup, work, out, env=env)
        proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    return record_of(work)["id"]


def check_registry_and_artifact(work: Path, out: Path, execution_id: str) -> None:
    """Whatever the moment: every registry entry's artifact is complete where it points."""
    for entry in list_local(work / "registry.sqlite"):
        uri = entry["metadata"]["artifact_uri"]
        artifact_format.check(Path(uri), execution_id, uri)


def test_kill_9_of_the_whole_tree_at_the_worst_moments_converges_to_one_registry_entry(tmp_path, setup, reference):  # noqa: F811
    """Killed right after Merge's output is published (before the record says so), then, resuming, right after
    Register's registry COMMIT, then right after registration.json is published: each resume converges."""
    moments = ["step Merge, output artifact", "registry-commit", "step Register, output registration"]
    work, out, hook = tmp_path / "work", tmp_path / "out", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    execution_id = killed_at(moments[0], setup, work, out, hook)
    check_registry_and_artifact(work, out, execution_id)
    for moment in moments[1:]:  # killed again, at the next moment, while resuming
        assert killed_at(moment, setup, work, out, hook, resume=execution_id) == execution_id
        check_registry_and_artifact(work, out, execution_id)
    assert main(["run", "--resume", execution_id, "--workdir", str(work)]) == 0
    (entry,) = list_local(work / "registry.sqlite")
    (artifact,) = out.glob("*/artifact")
    registration = json.loads((artifact / "registration.json").read_text())
    assert registration["model_package_arn"] == entry["model_package_arn"] == "local:model-package/allpairs-similarity/1"
    assert entry["metadata"]["execution_id"] == execution_id
    check_registry_and_artifact(work, out, execution_id)
    assert digest(artifact) == reference


# ---- a resume reruns what changed under it -----------------------------------------------------------------------


def test_a_chunk_deleted_after_preprocess_is_rebuilt_by_the_resume(tmp_path, setup, reference, monkeypatch, capsys):  # noqa: F811
    """Before: the resume skipped Preprocess and Similarity failed again, asking to rerun Preprocess, which a
    resume could not do. Now a resume checks the outputs of the steps it would skip and reruns the first one
    whose files changed, and every step after it."""
    data, spec = setup
    work, out = tmp_path / "work", tmp_path / "out"
    real = local_execution.RUNNERS["Training"]

    def delete_a_chunk_first(plan, args, ctx):
        (normalized,) = out.glob("*/normalized")
        (normalized / "chunks/chunk-000003.npy").unlink()
        return real(plan, args, ctx)

    monkeypatch.setitem(local_execution.RUNNERS, "Training", delete_a_chunk_first)
    argv = ["run", "--spec", str(spec), "--workdir", str(work), "--param", f"InputData={data}",
            "--param", f"OutputPrefix={out}", "--param", "InstanceCount=3", "--param", "TopK=4"]
    assert main(argv) == 1
    (normalized,) = out.glob("*/normalized")
    assert re.fullmatch(r"error: step Similarity, host (algo-\d) failed: similarity: \S+/Similarity/\1/input/data/"
                        r"normalized/chunks/chunk-000003.npy: chunk listed in manifest.json is missing; rerun the "
                        r"Preprocess step \(log: \S+\)", capsys.readouterr().err.splitlines()[-1])
    monkeypatch.setitem(local_execution.RUNNERS, "Training", real)
    execution_id = record_of(work)["id"]
    assert main(["run", "--resume", execution_id, "--workdir", str(work)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[1] == (f"Preprocess: its output {normalized} changed since it succeeded (chunks/chunk-000003.npy is "
                      "missing): running it again, and every step after it")
    (artifact,) = out.glob("*/artifact")
    assert digest(artifact) == reference
