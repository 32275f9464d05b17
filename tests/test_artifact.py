"""The artifact as a product: self-contained (ids and input positions inside it, dropped rows visible), the same
bytes however its batches arrive, files readable as the umask allows, and read through allpairs.open: from a
path, from S3 (moto) and from registry entries, without reading the whole artifact for a lookup."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

import allpairs
from steps import preprocess
from steps.contract import ARTIFACT_DATA_FILES, ARTIFACT_FILES
from steps.formats import artifact as fmt
from tests.brute import brute_force, normalize
from tests.test_steps import run_hosts, run_merge, run_register, use_root


def chain(monkeypatch, tmp_path, matrix_file, hosts=3, k=3, tag="a", budget_mb=16):
    """Preprocess (dropping non-finite rows) -> hosts -> Merge, as their jobs run them; returns the artifact folder."""
    root = use_root(monkeypatch, tmp_path / "pre")
    if not (root / "processing/output/normalized/manifest.json").exists():
        (root / "processing/input/matrix").mkdir(parents=True)
        os.link(matrix_file, root / "processing/input/matrix" / matrix_file.name)
        assert preprocess.run(["--input-uri", matrix_file.name, "--chunk-rows", "40", "--non-finite", "drop"]) == 0
    normalized = root / "processing/output/normalized"
    model = run_hosts(monkeypatch, tmp_path, normalized, hosts, k=k, budget_mb=budget_mb)
    code, merge_root, out = run_merge(monkeypatch, tmp_path, normalized, model, tag, top_k=k)
    assert code == 0, (merge_root / "output/message").read_text()
    return out


def digests(folder, names=ARTIFACT_DATA_FILES):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


# ---- the index space -------------------------------------------------------------------------------------------


@pytest.fixture
def dropped_row(tmp_path):
    """The issue's example: 100 x 4, NaN in row 5, TopK=3 (row-number ids)."""
    X = np.random.default_rng(10).standard_normal((100, 4)).astype(np.float32)
    X[5, 1] = np.nan
    np.save(tmp_path / "x.npy", X)
    return tmp_path / "x.npy", X


def test_neighbors_npy_against_the_input_row_numbers_after_a_dropped_row(monkeypatch, tmp_path, dropped_row):
    path, X = dropped_row
    out = chain(monkeypatch, tmp_path, path, hosts=3, k=3)
    kept = np.delete(np.arange(100), 5)  # input row numbers of the artifact rows
    bn, bs = brute_force(normalize(X[kept]), 3)
    in_input = np.where(bn >= 0, kept[bn], -1)  # the neighbours, as input row numbers

    rows = pq.read_table(out / "rows.parquet").to_pandas()
    assert rows["row"].tolist() == list(range(99))
    assert rows["input_row"].tolist() == kept.tolist() and rows["id"].tolist() == kept.tolist()
    assert rows.loc[5, "input_row"] == 6  # the row at position 5 is input row 6
    neighbors = np.load(out / "neighbors.npy")
    assert np.array_equal(neighbors, bn)  # artifact rows, as the index space says
    assert np.array_equal(rows["input_row"].to_numpy()[neighbors], in_input)  # the artifact alone maps them

    art = allpairs.open(out)
    assert art.manifest.counts.dropped_rows == 1 and art.manifest.rows == 99
    six = art.neighbors(6)
    assert six["id"].tolist() == [6, 6, 6] and six["rank"].tolist() == [1, 2, 3]
    assert six["neighbor_id"].tolist() == in_input[5].tolist()
    every = art.neighbors(kept)
    assert every["neighbor_id"].to_numpy().reshape(99, 3).tolist() == in_input.tolist()
    np.testing.assert_array_equal(every["score"].to_numpy().reshape(99, 3), bs)
    assert art.rows_of([6, 0, 99]).tolist() == [5, 0, 98]
    with pytest.raises(allpairs.NotFound) as err:
        art.neighbors(5)
    assert str(err.value) == (f"input row 5 was dropped by Preprocess (NaN or infinite values, input.non_finite: "
                              f"drop), so {out} has no neighbours for it")


def test_string_ids_with_dropped_rows_first_and_last(monkeypatch, tmp_path):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    X[[0, 17, 59], 2] = np.inf
    X[30] = X[31]  # a tie at 1.0
    ids = np.array([f"sku-{i:03d}" for i in range(60)], dtype=object)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    frame.insert(0, "sku", ids)
    frame.to_parquet(tmp_path / "items.parquet")
    out = chain(monkeypatch, tmp_path, tmp_path / "items.parquet", hosts=2, k=4)
    kept = np.setdiff1d(np.arange(60), [0, 17, 59])
    bn, bs = brute_force(normalize(X[kept].astype(np.float64)), 4)

    rows = pq.read_table(out / "rows.parquet").to_pandas()
    assert rows["id"].tolist() == ids[kept].tolist() and rows["input_row"].tolist() == kept.tolist()
    art = allpairs.open(out)
    asked = ["sku-031", "sku-001", "sku-058"]
    got = art.neighbors(asked)
    for name in asked:
        r = kept.tolist().index(int(name[4:]))
        mine = got[got["id"] == name]
        assert mine["neighbor_id"].tolist() == ids[kept][bn[r]].tolist()
        np.testing.assert_array_equal(mine["score"].to_numpy(), bs[r])
    assert got["id"].drop_duplicates().tolist() == asked  # in the order asked
    assert got[got["id"] == "sku-031"]["neighbor_id"].iloc[0] == "sku-030"
    assert art.neighbors("sku-031", k=2)["rank"].tolist() == [1, 2]
    with pytest.raises(allpairs.NotFound) as err:
        art.neighbors(["sku-001", "sku-017", "nope"])
    assert str(err.value) == (f"ids 'sku-017', 'nope' are not in {out} (57 rows, ids from column sku); 3 input "
                              "row(s) were dropped by Preprocess for NaN or infinite values; it may be one of them, "
                              "else check the id")
    with pytest.raises(allpairs.ArtifactError) as err:
        art.neighbors(31)
    assert str(err.value) == f"id 31: the ids of {out} are strings (column sku); pass '31'"
    with pytest.raises(allpairs.ArtifactError) as err:
        art.neighbors("sku-031", k=5)
    assert str(err.value) == f"k=5: {out} holds 4 neighbours per row; ask for 1 to 4"


# ---- the same bytes ----------------------------------------------------------------------------------------------


def synthetic(rows, k, rng, padded=()):
    """Sorted neighbour lists as the hosts hand them over (distinct, not self), some rows padded."""
    nb = np.stack([rng.choice(np.delete(np.arange(rows), r), k, replace=False) for r in range(rows)])
    sc = -np.sort(-rng.random((rows, k), dtype=np.float32), axis=1)
    for r in padded:
        nb[r, 1:], sc[r, 1:] = -1, np.nan
    return nb.astype(np.int64), sc


def write(out, nb, sc, ids, cuts):
    out.mkdir()
    bounds = [0, *cuts, len(nb)]
    batches = ((lo, nb[lo:hi], sc[lo:hi]) for lo, hi in zip(bounds, bounds[1:]))
    counts = fmt.write_files(batches, ids, len(nb), nb.shape[1], out, input_rows=pa.array(np.arange(len(nb)) * 2))
    (out / "report.html").write_text("<html></html>")  # Merge writes one beside the data files
    fmt.write_manifest(out, {"rows": len(nb), "dim": 8, "k": nb.shape[1], "top_k": nb.shape[1], "threshold": None,
                             "ids": {"source": "column id", "type": "string"}, "input": {"uri": "x"},
                             "counts": {"zero_rows": 0, "dropped_rows": 0, **counts}})
    return out


def test_parquet_layout_does_not_follow_the_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "EDGES_PER_ROW_GROUP", 60)  # many small row groups: 12 rows per edge group
    monkeypatch.setattr(fmt, "ROWS_PER_ROW_GROUP", 70)
    rng = np.random.default_rng(12)
    nb, sc = synthetic(500, 5, rng, padded=range(100, 140))
    nb[100:140, 0], sc[100:140, 0] = -1, np.nan  # rows 100-139 have no neighbour: whole row groups are empty
    ids = pa.array([f"id-{(i * 7919) % 500:04d}" for i in range(500)])  # not in row order
    cuts = [[], list(range(1, 500)), sorted(rng.choice(np.arange(1, 500), 9, replace=False).tolist()), [250]]
    written = [write(tmp_path / f"cut{i}", nb, sc, ids, c) for i, c in enumerate(cuts)]
    assert len({json.dumps(digests(folder)) for folder in written}) == 1
    assert len({(folder / "manifest.json").read_bytes() for folder in written}) == 1
    edges = pq.ParquetFile(written[0] / "neighbors.parquet")
    assert edges.metadata.num_row_groups == 42 and edges.metadata.row_group(9).num_rows == 0  # ceil(500 / 12)
    assert pq.ParquetFile(written[0] / "id_index.parquet").metadata.num_row_groups == 8
    art = allpairs.open(written[1])
    for r in [0, 11, 12, 99, 100, 139, 140, 499]:
        got = art.neighbors(ids[r].as_py())
        keep = nb[r] >= 0
        assert got["neighbor_id"].tolist() == [ids[j].as_py() for j in nb[r][keep]], r
        np.testing.assert_array_equal(got["score"].to_numpy(), sc[r][keep])
    assert art.rows()["input_row"].tolist() == list(range(0, 1000, 2))
    assert art.edges().count_rows() == int((nb >= 0).sum()) == art.manifest.counts.pairs


def test_ids_too_long_for_statistics_are_still_found(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "ROWS_PER_ROW_GROUP", 10)
    nb, sc = synthetic(40, 3, np.random.default_rng(13))
    names = [f"{i:02d}" + ("x" * 5000 if i in (9, 20) else "") for i in range(40)]  # parquet keeps no min/max
    out = write(tmp_path / "long", nb, sc, pa.array(names), [17])
    art = allpairs.open(out)
    assert None in art._index_bounds()[0]
    for r in (9, 20, 26, 39):
        assert art.neighbors(names[r])["neighbor_id"].tolist() == [names[j] for j in nb[r]]


def test_file_modes_follow_the_umask(monkeypatch, tmp_path, dropped_row):
    path, _ = dropped_row
    for mask in (0o022, 0o077):
        old = os.umask(mask)
        try:
            out = chain(monkeypatch, tmp_path / f"m{mask:o}", path, hosts=2)
            code, reg = run_register(monkeypatch, tmp_path / f"m{mask:o}", out, "a")
            assert code == 0
        finally:
            os.umask(old)
        files = [out / name for name in ARTIFACT_FILES] + [reg / "processing/output/registration/registration.json"]
        assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: oct(0o666 & ~mask)
                                                                                for f in files}


# ---- reading from S3 and from registry entries --------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "ALLPAIRS_LOCAL_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="bucket")
        yield


def upload(folder, uri):
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    for file in folder.iterdir():
        boto3.client("s3").upload_file(str(file), bucket, f"{prefix}/{file.name}")


def test_s3_and_registry_entries_read_what_the_path_reads(monkeypatch, tmp_path, dropped_row, aws):
    path, _ = dropped_row
    out = chain(monkeypatch, tmp_path, path, hosts=2, tag="r")  # its manifest says s3://bucket/runs/r/artifact
    upload(out, "s3://bucket/runs/r/artifact")
    local = allpairs.open(out)
    wanted = [0, 6, 50, 99]
    expected = local.neighbors(wanted)

    remote = allpairs.open("s3://bucket/runs/r/artifact")
    pd.testing.assert_frame_equal(remote.neighbors(wanted), expected)
    assert remote.manifest == local.manifest
    assert remote.edges().to_table().equals(pq.read_table(out / "neighbors.parquet"))
    pd.testing.assert_frame_equal(allpairs.open("s3://bucket/runs/r").rows(), local.rows())  # the execution prefix

    code, _ = run_register(monkeypatch, tmp_path, out, "r")
    assert code == 0
    entry = allpairs.open("local:model-package/g/1", registry=tmp_path / "registry.sqlite")
    pd.testing.assert_frame_equal(entry.neighbors(wanted), expected)
    sm = boto3.client("sagemaker")
    sm.create_model_package_group(ModelPackageGroupName="g")
    arn = sm.create_model_package(ModelPackageGroupName="g", ModelApprovalStatus="Approved",
                                  CustomerMetadataProperties={"artifact_uri": "s3://bucket/runs/r/artifact"}
                                  )["ModelPackageArn"]
    pd.testing.assert_frame_equal(allpairs.open(arn).neighbors(wanted), expected)

    with pytest.raises(allpairs.NotFound) as err:
        allpairs.open("local:model-package/g/7", registry=tmp_path / "registry.sqlite")
    assert str(err.value) == (f"local:model-package/g/7: no such entry in the local registry "
                              f"{tmp_path / 'registry.sqlite'}; list them with `python -m pipeline registry list` (or "
                              "pass the registry.sqlite of the run directory)")
    with pytest.raises(allpairs.NotFound) as err:
        allpairs.open("s3://bucket/runs/nothing")
    assert str(err.value) == ("s3://bucket/runs/nothing: no artifact there (no manifest.json); pass an artifact "
                              "folder, as a run prints it (`artifact: ...`), or a registry entry")


def test_a_lookup_reads_a_row_group_not_the_artifact(tmp_path, aws, monkeypatch):
    monkeypatch.setattr(fmt, "EDGES_PER_ROW_GROUP", 4096)  # 409 rows a group: 49 groups of 20,000 rows
    monkeypatch.setattr(fmt, "ROWS_PER_ROW_GROUP", 2048)
    rng = np.random.default_rng(14)
    nb, sc = synthetic(20_000, 10, rng)
    ids = pa.array([f"user-{i:07d}" for i in rng.permutation(20_000)])
    out = write(tmp_path / "big", nb, sc, ids, [5000])
    upload(out, "s3://bucket/big")
    art = allpairs.open("s3://bucket/big")
    handler = art.filesystem.handler
    before = handler.bytes_read
    got = art.neighbors(ids[12_345].as_py())
    assert got["neighbor_id"].tolist() == [ids[j].as_py() for j in nb[12_345]]

    def largest_group_and_footer(name):
        meta = pq.ParquetFile(out / name).metadata
        groups = [sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
                  for g in range(meta.num_row_groups)]
        footer = max(64 << 10, meta.serialized_size + 8)  # parquet reads a file's last 64 KiB first, in one go
        return meta.num_row_groups, max(groups) + footer

    (edge_groups, edge_bytes), (index_groups, index_bytes) = map(largest_group_and_footer,
                                                                 ["neighbors.parquet", "id_index.parquet"])
    assert (edge_groups, index_groups) == (49, 10)
    total = sum(f.stat().st_size for f in out.iterdir())
    assert handler.bytes_read - before <= edge_bytes + index_bytes < total / 10


def test_a_manifest_of_another_version_is_refused_with_the_fix(tmp_path, dropped_row, monkeypatch):
    path, _ = dropped_row
    out = chain(monkeypatch, tmp_path, path, hosts=1)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(allpairs.ArtifactError) as err:
        allpairs.open(out)
    assert str(err.value) == (f"{out}/manifest.json: allpairs.artifact version 1; this reader reads version 2 "
                              "(version 1 has no rows.parquet or id index): rerun the pipeline, or read its "
                              "neighbors.parquet with pandas")
