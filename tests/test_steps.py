"""The three step programs chained by hand, as SageMaker would start them (no runner involved)."""
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from steps import merge, preprocess, register, similarity
from steps.formats import artifact
from steps.errors import run_step
from tests.brute import brute_force, normalize


def use_root(monkeypatch, root):
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(root))
    return root


def run_preprocess(monkeypatch, tmp_path, X):
    root = use_root(monkeypatch, tmp_path / "pre")
    (root / "processing/input/matrix").mkdir(parents=True)
    np.save(root / "processing/input/matrix/x.npy", X)
    assert preprocess.run(["--input-uri", "x.npy", "--chunk-rows", "40"]) == 0
    return root / "processing/output/normalized"


def run_hosts(monkeypatch, tmp_path, normalized, hosts, k, budget_mb=16, min_score=-1.0):
    model = tmp_path / f"model-{hosts}-{budget_mb}"
    names = [f"algo-{i + 1}" for i in range(hosts)]
    for name in names:
        root = use_root(monkeypatch, tmp_path / f"h{hosts}-{budget_mb}" / name)
        (root / "input/config").mkdir(parents=True)
        (root / "input/data").mkdir(parents=True)
        (root / "input/data/normalized").symlink_to(normalized)
        (root / "model").symlink_to(model) if model.exists() else (model.mkdir(), (root / "model").symlink_to(model))
        (root / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": name, "hosts": names}))
        (root / "input/config/hyperparameters.json").write_text(json.dumps(
            {"top_k": str(k), "min_score": str(min_score), "memory_budget_mb": str(budget_mb), "threads": "0"}))
        assert similarity.run([]) == 0, (root / "output/failure").read_text()
    return model


def run_merge(monkeypatch, tmp_path, normalized, model, tag, top_k=5, min_score="-1.0"):
    """Merge as its processing job runs it; returns (exit code, its /opt/ml root, its artifact output)."""
    root = use_root(monkeypatch, tmp_path / f"merge-{tag}")
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(model)
    (root / "processing/input/normalized").symlink_to(normalized)
    code = merge.run(["--execution-id", f"exec-{tag}", "--artifact-uri", f"s3://bucket/runs/{tag}/artifact",
                      "--parameter", f"TopK={top_k}", "--parameter", f"MinScore={min_score}"])
    return code, root, root / "processing/output/artifact"


def run_register(monkeypatch, tmp_path, artifact, tag, execution=None):
    """Register as its processing job runs it, the artifact as its input; returns (exit code, its /opt/ml root)."""
    root = use_root(monkeypatch, tmp_path / f"register-{tag}")
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/artifact").symlink_to(artifact)
    monkeypatch.setenv("ALLPAIRS_LOCAL_REGISTRY", str(tmp_path / "registry.sqlite"))
    code = register.run(["--execution-id", execution or f"exec-{tag}", "--artifact-uri",
                         f"s3://bucket/runs/{tag}/artifact", "--model-package-group", "g"])
    return code, root


def test_steps_chain_equals_brute_force_for_any_host_count(monkeypatch, tmp_path):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((130, 12)).astype(np.float32)
    X[50] = X[3]
    X[9] = 0
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    digests = set()
    for hosts, budget in [(1, 16), (3, 16), (4, 64)]:
        model = run_hosts(monkeypatch, tmp_path, normalized, hosts, k=5, budget_mb=budget)
        tag = f"{hosts}-{budget}"
        code, root, out = run_merge(monkeypatch, tmp_path, normalized, model, tag)
        assert code == 0, (root / "output/message").read_text()
        code, reg = run_register(monkeypatch, tmp_path, out, tag)
        assert code == 0, (reg / "output/message").read_text()
        neighbors, scores = np.load(out / "neighbors.npy"), np.load(out / "scores.npy")
        bn, bs = brute_force(normalize(X), 5)
        assert neighbors.dtype == np.int32
        assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)
        digests.add((out / "neighbors.npy").read_bytes() + (out / "scores.npy").read_bytes())
        edges = pq.read_table(out / "neighbors.parquet").to_pandas()
        assert len(edges) == int((bn >= 0).sum())
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["zero_rows"] == 1 and manifest["counts"]["pairs"] == len(edges)
        registration = json.loads((reg / "processing/output/registration/registration.json").read_text())
        assert registration["model_package_arn"].startswith("local:model-package/g/")
    assert len(digests) == 1


def test_merge_refuses_a_missing_shard_and_writes_nothing(monkeypatch, tmp_path):
    X = np.random.default_rng(8).standard_normal((30, 4)).astype(np.float32)
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    model = run_hosts(monkeypatch, tmp_path, normalized, 3, k=3)
    os.unlink(model / "shard-algo-2.json")
    code, root, artifact = run_merge(monkeypatch, tmp_path, normalized, model, "missing")
    assert code == 1
    assert (root / "output/message").read_text() == (
        f"merge: {root}/processing/input/shards: no shard from host algo-2 of 3 hosts; rerun the Similarity step "
        "(a host failed or its output was lost)\n")
    assert list(artifact.iterdir()) == []
    assert not (tmp_path / "registry.sqlite").exists()


def _duplicate(model, tmp_path):
    (model / "copy").mkdir()
    for name in ("shard-algo-2.json", "shard-algo-2.neighbors.npy", "shard-algo-2.scores.npy"):
        (model / "copy" / name).write_bytes((model / name).read_bytes())
    return ("host algo-2 has two shards: SHARDS/copy/shard-algo-2.json and SHARDS/shard-algo-2.json; "
            "remove the stale one or rerun the Similarity step")


def _truncate(model, tmp_path):
    path = model / "shard-algo-3.scores.npy"
    path.write_bytes(path.read_bytes()[:-8])
    return f"SHARDS/{path.name}: checksum differs from shard-algo-3.json (truncated or altered); rerun the Similarity step"


def _other_job(model, tmp_path):
    meta = json.loads((model / "shard-algo-2.json").read_text())
    (model / "shard-algo-2.json").write_text(json.dumps({**meta, "job": "allpairs-similarity-0ther"}))
    return ("SHARDS/shard-algo-2.json: written by training job 'allpairs-similarity-0ther', but shard-algo-1.json "
            "by 'allpairs-similarity-abc123'; shards of different jobs (another execution's output?) are never "
            "merged: rerun the Similarity step into an empty output")


def _other_input(model, tmp_path):
    meta = json.loads((model / "shard-algo-1.json").read_text())
    (model / "shard-algo-1.json").write_text(json.dumps({**meta, "input_fingerprint": "f" * 64}))
    return (f"SHARDS/shard-algo-1.json: computed from other input (fingerprint ffffffffffff, this run's is "
            f"{meta['input_fingerprint'][:12]}); it belongs to another execution: remove it")


def _stranger(model, tmp_path):
    meta = json.loads((model / "shard-algo-3.json").read_text())
    (model / "shard-algo-3.json").rename(model / "shard-algo-7.json")
    for kind in ("neighbors", "scores"):
        (model / f"shard-algo-3.{kind}.npy").rename(model / f"shard-algo-7.{kind}.npy")
    files = {name.replace("algo-3", "algo-7"): digest for name, digest in meta["files"].items()}
    (model / "shard-algo-7.json").write_text(json.dumps({**meta, "host": "algo-7", "files": files}))
    return ("SHARDS/shard-algo-7.json: host algo-7 is not one of the job's hosts (algo-1, algo-2, algo-3); "
            "it belongs to another job: remove it or rerun the Similarity step")


@pytest.mark.parametrize("damage", [_duplicate, _truncate, _other_job, _other_input, _stranger],
                         ids=["duplicated", "truncated", "other job", "other input", "host not in the job"])
def test_merge_trusts_no_shard_and_writes_nothing(monkeypatch, tmp_path, damage):
    X = np.random.default_rng(8).standard_normal((30, 4)).astype(np.float32)
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    monkeypatch.setenv("TRAINING_JOB_NAME", "allpairs-similarity-abc123")
    model = run_hosts(monkeypatch, tmp_path, normalized, 3, k=3)
    expected = damage(model, tmp_path)
    code, root, artifact = run_merge(monkeypatch, tmp_path, normalized, model, "damaged")
    assert code == 1
    shards = str(root / "processing/input/shards")
    assert (root / "output/message").read_text() == f"merge: {expected.replace('SHARDS', shards)}\n"
    assert list(artifact.iterdir()) == []
    assert not (tmp_path / "registry.sqlite").exists()


@pytest.fixture
def merged_artifact(monkeypatch, tmp_path):
    X = np.random.default_rng(9).standard_normal((20, 4)).astype(np.float32)
    normalized = run_preprocess(monkeypatch, tmp_path, X)
    model = run_hosts(monkeypatch, tmp_path, normalized, 2, k=3)
    code, root, artifact = run_merge(monkeypatch, tmp_path, normalized, model, "r", top_k=3)
    assert code == 0
    return artifact


def test_a_failed_registration_writes_no_record(monkeypatch, tmp_path, merged_artifact):
    (tmp_path / "registry.sqlite").mkdir()  # a directory where the registry file should be: sqlite cannot open it
    code, root = run_register(monkeypatch, tmp_path, merged_artifact, "r")
    assert code == 1
    assert (root / "output/message").read_text() == (
        f"register: local registry {tmp_path / 'registry.sqlite'}: unable to open database file; if it is damaged, "
        f"move it aside (mv {tmp_path / 'registry.sqlite'} {tmp_path / 'registry.sqlite'}.damaged) and run again to "
        "start a new one; else check that it is a writable SQLite file\n")
    assert not (root / "processing/output/registration/registration.json").exists()


def _lose(artifact, name):
    (artifact / name).unlink()
    return f"register: s3://bucket/runs/r/artifact/{name}: listed in manifest.json but not there; "


def _cut(artifact, name):
    (artifact / name).write_bytes((artifact / name).read_bytes()[:-3])
    size = (artifact / name).stat().st_size
    return f"register: s3://bucket/runs/r/artifact/{name}: {size} bytes, manifest.json says {size + 3}; "


def _flip(artifact, name):
    data = bytearray((artifact / name).read_bytes())
    data[-1] ^= 1
    (artifact / name).write_bytes(bytes(data))
    return f"register: s3://bucket/runs/r/artifact/{name}: SHA-256 differs from manifest.json; "


@pytest.mark.parametrize("damage", [_lose, _cut, _flip], ids=["missing", "truncated", "altered"])
@pytest.mark.parametrize("name", artifact.DATA_FILES)  # every file the manifest vouches for
def test_register_refuses_an_artifact_not_complete_where_it_landed(monkeypatch, tmp_path, merged_artifact, damage,
                                                                   name):
    expected = damage(merged_artifact, name)
    code, root = run_register(monkeypatch, tmp_path, merged_artifact, "r")
    assert code == 1
    assert (root / "output/message").read_text() == (
        expected + "rerun the Merge step (its output upload may have failed or been altered)\n")
    assert not (tmp_path / "registry.sqlite").exists()


def test_register_refuses_another_executions_artifact(monkeypatch, tmp_path, merged_artifact):
    code, root = run_register(monkeypatch, tmp_path, merged_artifact, "r", execution="exec-other")
    assert code == 1
    assert (root / "output/message").read_text() == (
        "register: s3://bucket/runs/r/artifact/manifest.json: written for execution 'exec-r' at "
        "'s3://bucket/runs/r/artifact', not this one ('exec-other' at 's3://bucket/runs/r/artifact'): another "
        "execution's artifact is never registered; rerun the Merge step\n")
    assert not (tmp_path / "registry.sqlite").exists()


def test_register_retried_after_a_crash_gets_the_same_version(monkeypatch, tmp_path, merged_artifact):
    first = run_register(monkeypatch, tmp_path, merged_artifact, "r")
    shutil.rmtree(tmp_path / "register-r")  # the crashed job's container is gone; a retry starts afresh
    second = run_register(monkeypatch, tmp_path, merged_artifact, "r")
    records = [json.loads((root / "processing/output/registration/registration.json").read_text())
               for _, root in (first, second)]
    assert records[0]["model_package_arn"] == records[1]["model_package_arn"] == "local:model-package/g/1"
    from steps.formats.registry import list_local
    assert len(list_local(tmp_path / "registry.sqlite")) == 1


def test_npy_rows_stream_in_order_and_appear_only_complete(tmp_path):
    from steps.npy import read_rows, row_writer

    X = np.arange(60, dtype=np.float32).reshape(20, 3)
    with row_writer(tmp_path / "a.npy", np.float32, (20, 3)) as out:
        out.write(X[:7])
        out.write(X[7:])
    assert np.array_equal(np.load(tmp_path / "a.npy"), X)
    assert np.array_equal(read_rows(tmp_path / "a.npy", 5, 9), X[5:9])
    with pytest.raises(ValueError, match="b.npy: 3 rows written, 20 expected"):
        with row_writer(tmp_path / "b.npy", np.float32, (20, 3)) as out:
            out.write(X[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no half-written b.npy, no temp file
