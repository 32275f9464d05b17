"""Similarity checkpoints and resume, at the step level: real hosts (subprocesses) killed mid-run, restarted,
and their shards compared byte for byte with an uninterrupted run."""
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

from steps import preprocess
from steps.contract import CHECKPOINT_SECONDS_ENV, HOST_FAULT_ENV, Host
from steps.formats import checkpoints
from steps.errors import run_step
from steps.similarity import Settings, compute_shard

REPO = Path(__file__).resolve().parents[1]
ROWS, CHUNK = 1200, 300  # the kernel yields per chunk here: 4 blocks per single host


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
    env = {**os.environ, "ALLPAIRS_OPT_ML": str(root), CHECKPOINT_SECONDS_ENV: interval}
    env.pop(HOST_FAULT_ENV, None)
    if fault:
        env[HOST_FAULT_ENV] = fault
    proc = subprocess.run([sys.executable, "-m", "steps.similarity"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout


def shard_digest(root: Path, name="algo-1") -> str:
    model = root / "model"
    return hashlib.sha256(b"".join((model / f"shard-{name}.{kind}.npy").read_bytes()
                                   for kind in ("neighbors", "scores"))).hexdigest()


@pytest.fixture(scope="module")
def reference(normalized, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    (root / "ck").mkdir()
    code, out = run_host(root / "host", normalized, root / "ck", interval="3600")
    assert code == 0, out
    return shard_digest(root / "host")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_killed_host_resumes_from_its_last_checkpoint_bit_identical(tmp_path, normalized, reference):
    ck = tmp_path / "ck"
    ck.mkdir()
    code, out = run_host(tmp_path / "h", normalized, ck, fault="after-checkpoints=2")
    assert code == -9, out
    assert out.splitlines()[-1] == ("algo-1: fault injected: killed after checkpoint 2 (rows [300, 600)); "
                                    "sending SIGKILL to this host")
    assert len([n for n in names(ck) if n.endswith(".ckpt")]) == 2
    assert not (tmp_path / "h/model/shard-algo-1.json").exists()
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("algo-1: resumed rows [0, 300) from checkpoint rows-000000000000-000000000300.")
    assert lines[1].startswith("algo-1: resumed rows [300, 600) from checkpoint rows-000000000300-000000000600.")
    assert lines[2].startswith("algo-1: checkpoint rows [600, 900) saved")
    assert lines[-1].endswith("(600 resumed from checkpoints)")
    assert shard_digest(tmp_path / "h") == reference


def test_kill_during_a_checkpoint_write_leaves_a_torn_temp_file_that_is_discarded(tmp_path, normalized, reference):
    ck = tmp_path / "ck"
    ck.mkdir()
    code, out = run_host(tmp_path / "h", normalized, ck, fault="during-checkpoint=2")
    assert code == -9, out
    (torn,) = [n for n in names(ck) if n.endswith(".tmp")]
    assert torn.startswith(".rows-000000000300-000000000600.")
    assert 0 < (ck / torn).stat().st_size < 300 * 5 * 12  # half written: neighbours in, scores not
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    assert out.splitlines()[0] == (f"algo-1: discarding partial checkpoint write {torn} (its writer was killed); "
                                   "those rows are computed again")
    assert not any(n.endswith(".tmp") for n in names(ck))
    assert shard_digest(tmp_path / "h") == reference


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_torn_or_altered_checkpoint_is_detected_discarded_and_recomputed(tmp_path, normalized, reference, damage):
    ck = tmp_path / "ck"
    ck.mkdir()
    assert run_host(tmp_path / "h", normalized, ck)[0] == 0
    victim = ck / sorted(n for n in names(ck) if n.startswith("rows-000000000300-"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        victim.write_bytes(data[:-100])
        reason = f"{300 * 5 * 12 - 100} payload bytes, the header says {300 * 5 * 12}"
    else:
        data[-7] ^= 0xFF
        victim.write_bytes(bytes(data))
        reason = "payload checksum differs from the header"
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    assert f"algo-1: discarding checkpoint {victim.name}: {reason} (torn or altered); those rows are computed again" \
        in out.splitlines()
    assert "algo-1: checkpoint rows [300, 600) saved: " + victim.name in out.splitlines()
    assert shard_digest(tmp_path / "h") == reference


def test_checkpoints_of_other_parameters_are_ignored_and_said_so(tmp_path, normalized, reference):
    ck = tmp_path / "ck"
    ck.mkdir()
    assert run_host(tmp_path / "other", normalized, ck, k=4)[0] == 0  # same data, other k: 4 files
    other_key = names(ck)[0].split(".")[1]
    # The same content under this run's key (a renamed file) must fail on its header, not be mixed in.
    mine = checkpoints.checkpoint_key(json.loads((normalized / "manifest.json").read_text())["fingerprint"], 5, None)
    impostor = ck / checkpoints.file_name(0, 300, mine)
    shutil.copy(ck / checkpoints.file_name(0, 300, other_key), impostor)
    code, out = run_host(tmp_path / "h", normalized, ck)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == (f"algo-1: discarding checkpoint {impostor.name}: header k=4, expected 5 (torn or altered); "
                        "those rows are computed again")
    assert lines[1] == (f"algo-1: ignoring 4 checkpoint file(s) in {tmp_path / 'h/checkpoints'} computed from other "
                        f"input or parameters (key {other_key}; this run's is {mine}): they are not mixed in")
    assert lines[-1].endswith("(0 resumed from checkpoints)")
    assert shard_digest(tmp_path / "h") == reference


def test_another_row_split_reuses_every_completed_row(tmp_path, normalized):
    """Checkpoints are keyed by row range, not host: 2 hosts' work is reused by 3 hosts (capacity changed)."""
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
        assert code == 0 and out.splitlines()[-1].endswith("(400 resumed from checkpoints)"), out
        assert "saved" not in out  # nothing computed, nothing written
        assert run_host(tmp_path / "ref" / name, normalized, fresh, name=name, hosts=three)[0] == 0
        assert shard_digest(tmp_path / "three" / name, name) == shard_digest(tmp_path / "ref" / name, name)


def test_sigterm_saves_the_completed_rows_before_the_host_exits(tmp_path, normalized, monkeypatch):
    """Spot's two-minute warning is SIGTERM: rows already computed are checkpointed even between intervals."""
    from steps import similarity

    calls = []

    def interrupted_top_k(corpus, queries, config, zero=None):
        for first in range(queries.start, queries.stop, 100):
            calls.append(first)
            if first == queries.start + 200:
                raise KeyboardInterrupt("SIGTERM")
            yield first, np.zeros((100, config.k), np.int64), np.zeros((100, config.k), np.float32)

    monkeypatch.setattr(similarity, "top_k", interrupted_top_k)
    monkeypatch.setenv(CHECKPOINT_SECONDS_ENV, "3600")
    monkeypatch.delenv(HOST_FAULT_ENV, raising=False)
    (tmp_path / "ck").mkdir()
    with pytest.raises(KeyboardInterrupt):
        compute_shard(normalized, Host("algo-1", ["algo-1"]), Settings(5, None, 16, 1), tmp_path / "model",
                      tmp_path / "ck", available=1 << 40)
    (saved,) = names(tmp_path / "ck")
    assert saved.startswith("rows-000000000000-000000000200.")  # the two blocks done before the signal
    assert list((tmp_path / "model").iterdir()) == []  # no shard: the step did not finish


def test_plan_cover_takes_the_furthest_reaching_checkpoint_and_computes_the_gaps():
    def c(a, b):
        return checkpoints.Checkpoint(Path(f"{a}-{b}"), a, b, 0, 1)

    usable = [c(0, 50), c(0, 120), c(100, 300), c(400, 500)]
    pieces = [(lo, hi, cp and cp.path.name) for lo, hi, cp in checkpoints.plan_cover((10, 450), usable)]
    assert pieces == [(10, 120, "0-120"), (120, 300, "100-300"), (300, 400, None), (400, 450, "400-500")]
    assert checkpoints.plan_cover((0, 10), []) == [(0, 10, None)]
