"""Stale or foreign data is never trusted (issue 11): the normalized fingerprint is derived from the verified
bytes, Merge checks the shards against this execution's TopK and MinScore, a resume notices a published output
that changed under it."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.local.storage import signature_change, tree_signature
from steps.errors import StepError
from steps.formats.normalized import load_normalized
from steps.io import sha256_file
from tests.test_steps import run_hosts, run_merge, run_preprocess


@pytest.fixture
def normalized(monkeypatch, tmp_path):
    X = np.random.default_rng(5).standard_normal((90, 6)).astype(np.float32)
    return run_preprocess(monkeypatch, tmp_path, X)


def test_an_edited_chunk_with_its_checksum_updated_but_not_the_fingerprint_is_refused(normalized):
    """The manifest's fingerprint keys the checkpoints: kept as it was, it would let a resume reuse rows computed
    on the old data. It is derived from the verified hashes instead, and must agree."""
    chunk = normalized / "chunks/chunk-000001.npy"
    edited = np.load(chunk)
    edited[0] = edited[1]
    np.save(chunk, edited)
    manifest = json.loads((normalized / "manifest.json").read_text())
    manifest["chunks"][1]["sha256"] = sha256_file(chunk)
    (normalized / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StepError) as info:
        load_normalized(normalized)
    old = manifest["fingerprint"]
    assert str(info.value).startswith(f"{normalized}/manifest.json: fingerprint {old[:12]} is not that of the chunks "
                                      "and ids it lists (")
    assert str(info.value).endswith("): the manifest was edited or mixed from two runs; rerun the Preprocess step")
    with pytest.raises(StepError):
        load_normalized(normalized, verify=False)  # Merge's view (ids only) refuses it too


def test_edited_ids_with_their_checksum_updated_are_refused_the_same_way(normalized):
    manifest = json.loads((normalized / "manifest.json").read_text())
    manifest["ids"]["sha256"] = "0" * 64
    (normalized / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StepError) as info:
        load_normalized(normalized)
    assert str(info.value) == (f"{normalized}/ids.parquet: checksum differs from manifest.json (corrupt or from "
                               "another run); rerun the Preprocess step")


def lying_npy(path, shape, dtype=np.float32, payload=b""):
    """A .npy file whose header claims `shape` whatever the bytes after it."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        f.write(payload)


@pytest.mark.parametrize("write, held", [
    (lambda p: np.save(p, np.zeros((30, 7), np.float32)), "float32(30, 7) in 968 bytes"),
    (lambda p: np.save(p, np.zeros((40, 6), np.float64)), "float64(40, 6) in 2048 bytes"),
    (lambda p: lying_npy(p, (40, 6), payload=b"\0" * 100), "float32(40, 6) in 228 bytes"),
    (lambda p: lying_npy(p, (10 ** 12, 6)), "float32(1000000000000, 6) in 128 bytes"),
])
def test_a_chunk_whose_header_lies_is_refused_before_it_is_mapped(normalized, write, held):
    chunk = normalized / "chunks/chunk-000000.npy"
    write(chunk)
    manifest = json.loads((normalized / "manifest.json").read_text())
    manifest["chunks"][0]["sha256"] = sha256_file(chunk)
    (normalized / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StepError) as info:
        load_normalized(normalized)
    assert str(info.value) == (f"{chunk}: holds {held}, manifest.json says float32(40, 6) in 1088 bytes; rerun the "
                               "Preprocess step")


@pytest.mark.parametrize("parameter, message", [
    ("TopK=7", "the shards were computed with k=5, but this execution's TopK is 7: they belong to another "
               "execution; rerun the Similarity step into an empty output"),
    ("MinScore=0.25", "the shards were computed with min_score=none, but this execution's MinScore is 0.25: they "
                      "belong to another execution; rerun the Similarity step into an empty output"),
])
def test_merge_refuses_shards_computed_with_another_top_k_or_min_score(monkeypatch, tmp_path, normalized, parameter,
                                                                       message):
    from steps import merge

    model = run_hosts(monkeypatch, tmp_path, normalized, 2, k=5)
    root = tmp_path / "merge"
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(root))
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(model)
    (root / "processing/input/normalized").symlink_to(normalized)
    assert merge.run(["--execution-id", "e", "--artifact-uri", "s3://b/e/artifact", "--parameter", parameter,
                      "--parameter", "TopK=5" if parameter.startswith("MinScore") else "MinScore=-1.0"]) == 1
    assert (root / "output/message").read_text() == f"merge: {root}/processing/input/shards: {message}\n"
    assert not list((root / "processing/output/artifact").iterdir())


def test_merge_takes_shards_of_this_execution_s_parameters(monkeypatch, tmp_path, normalized):
    model = run_hosts(monkeypatch, tmp_path, normalized, 2, k=5, min_score=0.1)
    code, root, out = run_merge(monkeypatch, tmp_path, normalized, model, "ok", top_k=5, min_score="0.1")
    assert code == 0, (root / "output/message").read_text()


def test_a_published_output_that_was_deleted_replaced_or_edited_is_noticed(tmp_path):
    out = tmp_path / "normalized"
    (out / "chunks").mkdir(parents=True)
    (out / "chunks/a.npy").write_bytes(b"12345")
    (out / "manifest.json").write_text("{}")
    published = tree_signature(str(out), "here")
    assert signature_change(published, tree_signature(str(out), "here")) is None
    (out / "extra").write_text("added later: not the step's")  # e.g. registration.json beside the artifact
    assert signature_change(published, tree_signature(str(out), "here")) is None
    (out / "chunks/a.npy").write_bytes(b"54321")  # same size, new content
    os.utime(out / "chunks/a.npy", ns=(1, 1))
    assert signature_change(published, tree_signature(str(out), "here")) == "chunks/a.npy was replaced or edited"
    (out / "chunks/a.npy").unlink()
    assert signature_change(published, tree_signature(str(out), "here")) == "chunks/a.npy is missing"
