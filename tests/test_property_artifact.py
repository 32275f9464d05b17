"""Property: for random small matrices (duplicates, zero rows, ties), host counts, chunk sizes, budgets and
thresholds, the merged artifact equals brute force. The step programs run in-process (as tests/test_steps.py
does), with a shared checkpoint folder that may already hold another split's checkpoints: resumed or not,
the artifact is the same."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steps import merge, preprocess, similarity
from tests.brute import brute_force, normalize


@st.composite
def matrices(draw):
    rows = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 6))
    # Small integers make exact ties and duplicates common; zero rows come for free (and are forced below).
    values = draw(st.lists(st.integers(-2, 2), min_size=rows * dim, max_size=rows * dim))
    X = np.array(values, dtype=np.float32).reshape(rows, dim)
    if rows > 2 and draw(st.booleans()):
        X[draw(st.integers(0, rows - 1))] = X[draw(st.integers(0, rows - 1))]
    if draw(st.booleans()):
        X[draw(st.integers(0, rows - 1))] = 0
    return X


def step(root: Path, module, argv=()):
    os.environ["ALLPAIRS_OPT_ML"] = str(root)
    failure = root / ("output/failure" if module is similarity else "output/message")
    assert module.run(list(argv)) == 0, failure.read_text()


def similarity_hosts(tmp: Path, tag: str, normalized: Path, ck: Path, hosts: int, k: int, min_score: float,
                     budget: int) -> Path:
    model = tmp / f"model-{tag}"
    model.mkdir()
    names = [f"algo-{i + 1}" for i in range(hosts)]
    for name in names:
        root = tmp / tag / name
        (root / "input/config").mkdir(parents=True)
        (root / "input/data").mkdir()
        (root / "input/data/normalized").symlink_to(normalized)
        (root / "model").symlink_to(model)
        (root / "checkpoints").symlink_to(ck)
        (root / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": name, "hosts": names}))
        (root / "input/config/hyperparameters.json").write_text(json.dumps(
            {"top_k": str(k), "min_score": str(min_score), "memory_budget_mb": str(budget), "threads": "1"}))
        step(root, similarity)
    return model


def merged(tmp: Path, tag: str, normalized: Path, model: Path) -> tuple[np.ndarray, np.ndarray]:
    root = tmp / f"merge-{tag}"
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(model)
    (root / "processing/input/normalized").symlink_to(normalized)
    step(root, merge, ["--execution-id", tag, "--artifact-uri", f"s3://b/{tag}/artifact"])
    out = root / "processing/output/artifact"
    return np.load(out / "neighbors.npy"), np.load(out / "scores.npy")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=matrices(), hosts=st.integers(1, 4), resumed_hosts=st.integers(1, 4), k=st.integers(1, 8),
       chunk=st.integers(1, 16), budget=st.sampled_from([16, 64]),
       min_score=st.sampled_from([-1.0, 0.0, 0.5, 1.0]))
def test_merged_artifact_equals_brute_force(X, hosts, resumed_hosts, k, chunk, budget, min_score):
    hosts, resumed_hosts = min(hosts, len(X)), min(resumed_hosts, len(X))
    saved = os.environ.get("ALLPAIRS_OPT_ML"), os.environ.get("ALLPAIRS_LOCAL_REGISTRY")
    tmp = Path(tempfile.mkdtemp(prefix="prop-"))
    try:
        os.environ["ALLPAIRS_LOCAL_REGISTRY"] = str(tmp / "registry.sqlite")
        os.environ["ALLPAIRS_CHECKPOINT_SECONDS"] = "0"
        pre = tmp / "pre"
        (pre / "processing/input/matrix").mkdir(parents=True)
        np.save(pre / "processing/input/matrix/x.npy", X)
        step(pre, preprocess, ["--input-uri", "x.npy", "--chunk-rows", str(chunk)])
        normalized = pre / "processing/output/normalized"
        ck = tmp / "ck"
        ck.mkdir()
        threshold = None if min_score <= -1 else min_score
        bn, bs = brute_force(normalize(X), k, threshold)
        first = merged(tmp, "a", normalized, similarity_hosts(tmp, "a", normalized, ck, hosts, k, min_score, budget))
        # Another split over the same checkpoints: every row is resumed, none recomputed, same artifact.
        second = merged(tmp, "b", normalized,
                        similarity_hosts(tmp, "b", normalized, ck, resumed_hosts, k, min_score, budget))
        # TopK beyond what a row can have (the other rows with a direction) keeps only the columns that can fill.
        width = min(k, max(1, int(X.any(axis=1).sum()) - 1))
        assert (bn[:, width:] == -1).all()
        for neighbors, scores in (first, second):
            assert np.array_equal(neighbors, bn[:, :width]), (neighbors, bn)
            assert np.array_equal(scores, bs[:, :width], equal_nan=True)
    finally:
        os.environ.pop("ALLPAIRS_CHECKPOINT_SECONDS", None)
        for name, value in zip(("ALLPAIRS_OPT_ML", "ALLPAIRS_LOCAL_REGISTRY"), saved):
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})
        shutil.rmtree(tmp, ignore_errors=True)
