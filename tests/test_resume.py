"""Similarity checkpoints and resume, at the step level: real hosts (subprocesses) killed or stopped mid-run,
restarted, and their shards compared byte for byte with an uninterrupted run's; a restart with another
InstanceCount reusing the finished passes, the artifact identical."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steps import merge, preprocess
from steps.contract import BLOCK_ROWS_ENV, CHECKPOINT_SECONDS_ENV, HOST_FAULT_ENV, Host
from steps.formats import checkpoints
from steps.kernel import Grid, KernelConfig
from steps.share import plan_work

REPO = Path(__file__).resolve().parents[1]
ROWS, CHUNK, BLOCK = 1200, 300, 150  # a grid of 8 blocks: one host's pass takes 8 steps


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    (root / "processing/input/matrix").mkdir(parents=True)
    X = np.random.default_rng(3).standard_normal((ROWS, 8)).astype(np.float32)
    X[40] = X[900]  # a tie across blocks
    X[77] = 0
    np.save(root / "processing/input/matrix/x.npy", X)
    old = os.environ.get("ALLPAIRS_OPT_ML")
    os.environ["ALLPAIRS_OPT_ML"] = str(root)
    try:
        assert preprocess.run(["--input-uri", "x.npy", "--chunk-rows", str(CHUNK)]) == 0
    finally:
        os.environ.pop("ALLPAIRS_OPT_ML") if old is None else os.environ.update(ALLPAIRS_OPT_ML=old)
    return root / "processing/output/normalized"


def run_host(root: Path, normalized: Path, checkpoints_dir: Path, name="algo-1", hosts=("algo-1",), k=5,
             fault=None, interval="0"):
    """Start `python -m steps.similarity` as one SageMaker host would be; returns (exit code, stdout)."""
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/data").mkdir(parents=True, exist_ok=True)
    if not (root / "input/data/normalized").exists():
        (root / "input/data/normalized").symlink_to(normalized)
        (root / "checkpoints").symlink_to(checkpoints_dir)
    shutil.rmtree(root / "model", ignore_errors=True)  # a restarted host is a new instance
    (root / "model").mkdir()
    (root / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": name, "hosts": list(hosts)}))
    (root / "input/config/hyperparameters.json").write_text(json.dumps(
        {"top_k": str(k), "min_score": "-1", "memory_budget_mb": "16", "threads": "1"}))
    env = {**os.environ, "ALLPAIRS_OPT_ML": str(root), CHECKPOINT_SECONDS_ENV: interval, BLOCK_ROWS_ENV: str(BLOCK),
           "TRAINING_JOB_NAME": "allpairs-similarity-test"}
    env.pop(HOST_FAULT_ENV, None)
    if fault:
        env[HOST_FAULT_ENV] = fault
    proc = subprocess.run([sys.executable, "-m", "steps.similarity"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def shard_digest(root: Path, name="algo-1") -> str:
    model = root / "model"
    return hashlib.sha256(b"".join((model / f"shard-{name}.{kind}.npy").read_bytes()
                                   for kind in ("neighbors", "scores"))).hexdigest()


def merged(tmp_path: Path, normalized: Path, models: list[Path], tag: str) -> bytes:
    """Merge the hosts' model folders as one training output; the artifact's neighbours and scores."""
    shards = tmp_path / f"shards-{tag}"
    shards.mkdir()
    for model in models:
        for f in model.iterdir():
            shutil.copy(f, shards / f.name)
    root = tmp_path / f"merge-{tag}"
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(shards)
    (root / "processing/input/normalized").symlink_to(normalized)
    old = os.environ.get("ALLPAIRS_OPT_ML")
    os.environ["ALLPAIRS_OPT_ML"] = str(root)
    try:
        assert merge.run(["--execution-id", tag, "--artifact-uri", f"s3://b/{tag}"]) == 0, \
            (root / "output/message").read_text()
    finally:
        os.environ.pop("ALLPAIRS_OPT_ML") if old is None else os.environ.update(ALLPAIRS_OPT_ML=old)
    out = root / "processing/output/artifact"
    return (out / "neighbors.npy").read_bytes() + (out / "scores.npy").read_bytes()


@pytest.fixture(scope="module")
def reference(normalized, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    (root / "ck").mkdir()
    code, out = run_host(root / "host", normalized, root / "ck", interval="3600")
    assert code == 0, out
    return shard_digest(root / "host")


def names(directory: Path, prefix: str = "") -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


def test_killed_host_resumes_from_its_last_checkpoint_bit_identical(tmp_path, normalized, reference):
    ck = tmp_path / "ck"
    ck.mkdir()
    code, out = run_host(tmp_path / "h", normalized, ck, fault="after-checkpoints=2")
    assert code == -9, out
    assert out.splitlines()[-1] == ("algo-1: fault injected: killed after checkpoint 2 (pass of block rows "
                                    "[0, 8): 2 of 8 steps done); sending SIGKILL to this host")
    # One host owns every block: no mirror lists, only its state (the older one is gone).
    # One host owns every block: no mirror lists, only the state of its pass over rows [0, 1200), kept in place.
    assert names(ck, "rows-") == [f"rows-{0:012d}-{ROWS:012d}.{names(ck, 'rows-')[0].split('.')[1]}.ckpt"]
    assert names(ck, "lists-") == []
    assert not (tmp_path / "h/model/shard-algo-1.json").exists()
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    assert "algo-1: resuming the pass of block rows [0, 8) from checkpoints: 2 of 8 steps done" in out.splitlines()
    assert out.splitlines()[-1].endswith("(2 steps resumed from checkpoints)")
    assert shard_digest(tmp_path / "h") == reference


def test_kill_during_a_checkpoint_write_leaves_a_torn_temp_file_that_is_discarded(tmp_path, normalized, reference):
    ck = tmp_path / "ck"
    ck.mkdir()
    code, out = run_host(tmp_path / "h", normalized, ck, fault="during-checkpoint=2")
    assert code == -9, out
    (torn,) = [n for n in names(ck) if n.endswith(".tmp")]
    assert torn.startswith(f".rows-{0:012d}-{ROWS:012d}.") and torn.endswith(".tmp")
    assert len(names(ck, "rows-")) == 1  # the state before it, intact
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    lines = out.splitlines()
    assert f"algo-1: discarding partial checkpoint write {torn} (its writer was killed)" in lines
    assert "algo-1: resuming the pass of block rows [0, 8) from checkpoints: 1 of 8 steps done" in lines
    assert not any(n.endswith(".tmp") for n in names(ck))
    assert shard_digest(tmp_path / "h") == reference


@pytest.mark.parametrize("damage", ["truncated state", "flipped byte in a lists file"])
def test_a_torn_or_altered_checkpoint_is_detected_discarded_and_recomputed(tmp_path, normalized, damage):
    ck = tmp_path / "ck"
    ck.mkdir()
    two = ["algo-1", "algo-2"]  # two hosts: algo-1's pass writes mirror lists too
    code, out = run_host(tmp_path / "h", normalized, ck, name="algo-1", hosts=two, fault="after-checkpoints=6")
    assert code == -9, out
    (state,) = names(ck, "rows-")
    if damage == "truncated state":
        victim = ck / state
        data = victim.read_bytes()
        victim.write_bytes(data[:-100])
        reason = "payload bytes, the header says"
    else:
        victim = ck / names(ck, "lists-")[0]
        data = bytearray(victim.read_bytes())
        data[-7] ^= 0xFF
        victim.write_bytes(bytes(data))
        reason = "payload checksum differs from the header"
    code, out = run_host(tmp_path / "h", normalized, ck, name="algo-1", hosts=two)
    assert code == 0, out
    (discarded,) = [line for line in out.splitlines() if line.startswith(f"algo-1: discarding checkpoint {state}: ")]
    assert reason in discarded and discarded.endswith("(torn, altered or incomplete); that pass starts again")
    assert "resuming" not in out  # the only state is gone: the pass starts again
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run_host(tmp_path / "ref", normalized, fresh, name="algo-1", hosts=two)[0] == 0
    assert shard_digest(tmp_path / "h") == shard_digest(tmp_path / "ref")


def test_checkpoints_of_other_parameters_are_ignored_and_said_so(tmp_path, normalized, reference):
    ck = tmp_path / "ck"
    ck.mkdir()
    assert run_host(tmp_path / "other", normalized, ck, k=4)[0] == 0  # same data, other k
    other_key = names(ck, "rows-")[0].split(".")[1]
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    fingerprint = json.loads((normalized / "manifest.json").read_text())["fingerprint"]
    key = checkpoints.checkpoint_key(fingerprint, 5, None, Grid(ROWS, BLOCK).describe(), KernelConfig(5).width)
    assert [line for line in out.splitlines() if "ignoring checkpoint files" in line] == [
        f"algo-1: ignoring checkpoint files in {tmp_path / 'h/checkpoints'} computed from other input or parameters "
        f"(key {other_key}; this run's is {key}): they are not mixed in"]
    assert out.splitlines()[-1].endswith("(0 steps resumed from checkpoints)")
    assert shard_digest(tmp_path / "h") == reference


def test_another_instance_count_reuses_every_finished_pass(tmp_path, normalized):
    """Capacity came back smaller or larger: the finished passes of the 2-host job are reused by 3 hosts, which
    compute nothing and whose merged artifact is the one a fresh 3-host job makes."""
    ck = tmp_path / "ck"
    ck.mkdir()
    two = [f"algo-{i}" for i in (1, 2)]
    three = [f"algo-{i}" for i in (1, 2, 3)]
    for name in two:
        assert run_host(tmp_path / "two" / name, normalized, ck, name=name, hosts=two, interval="3600")[0] == 0
    fresh = tmp_path / "fresh-ck"
    fresh.mkdir()
    for name in three:
        code, out = run_host(tmp_path / "three" / name, normalized, ck, name=name, hosts=three)
        assert code == 0, out
        assert "checkpoint: pass" not in out  # nothing computed, nothing written
        assert run_host(tmp_path / "ref" / name, normalized, fresh, name=name, hosts=three)[0] == 0
    reused = merged(tmp_path, normalized, [tmp_path / "three" / n / "model" for n in three], "reused")
    assert reused == merged(tmp_path, normalized, [tmp_path / "ref" / n / "model" for n in three], "fresh")


def test_sigterm_checkpoints_the_finished_steps_before_the_host_exits(tmp_path, normalized, reference):
    """Spot's two-minute warning is SIGTERM: the host checkpoints and exits saying so (a stop between two
    interval checkpoints: tests/test_faults.py)."""
    ck = tmp_path / "ck"
    ck.mkdir()
    code, out = run_host(tmp_path / "h", normalized, ck, fault="after-checkpoints=1;signal=TERM")
    assert code == 1, out
    assert out.splitlines()[-1] == ("similarity: stopped by SIGTERM; the pass of block rows [0, 8) stopped with 1 "
                                    "of 8 steps done; all of it is in checkpoints and a restart resumes from there")
    assert not (tmp_path / "h/model/shard-algo-1.json").exists()
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0 and "resuming the pass of block rows [0, 8) from checkpoints: 1 of 8" in out, out
    assert shard_digest(tmp_path / "h") == reference


def record(b0, b1, done=True):
    return checkpoints.PassRecord(range(b0, b1), 0, 0, 1, done, [], Path("x"), 0, 0, 1, None)


def test_the_plan_reuses_finished_passes_of_other_plans_once_each():
    grid = Grid(800, 100)  # 8 blocks
    config = KernelConfig(5, None, 16 << 20)
    host = lambda i, n: Host(f"algo-{i + 1}", [f"algo-{j + 1}" for j in range(n)])  # noqa: E731
    # Another plan finished [0, 4) and [2, 6) (overlapping: the first in block order wins) and half of [4, 8).
    records = {(0, 4): record(0, 4), (2, 6): record(2, 6), (4, 8): record(4, 8, done=False)}
    plans = [plan_work(grid, host(i, 3), config, 8, records) for i in range(3)]
    # 3 hosts: blocks [0, 2), [2, 5), [5, 8). Host 1 holds block 0, so it copies [0, 4); nobody computes 0-3.
    assert [(w.blocks, w.reuse_only) for w in plans[0]] == [(range(0, 4), True)]
    assert [(w.blocks, w.reuse_only) for w in plans[1]] == [(range(4, 5), False)]
    assert [(w.blocks, w.reuse_only) for w in plans[2]] == [(range(5, 8), False)]
    # The same plan again: its own passes resume from their states (a finished one is copied).
    mine = {(0, 4): record(0, 4), (4, 8): record(4, 8, done=False)}
    again = [plan_work(grid, host(i, 2), config, 8, mine) for i in range(2)]
    assert [(w.blocks, w.reuse_only, w.record is not None) for plan in again for w in plan] == [
        (range(0, 4), True, True), (range(4, 8), False, True)]
