"""Queries mode: each query row's exact top-k against the corpus, compared with brute force."""
from __future__ import annotations

import numpy as np
import pytest

from steps.kernel import Corpus, KernelConfig, PartialList, StepDone
from steps.kernel.queries import QueryPass, query_passes, without_excluded
from tests.brute import brute_queries, normalize


def _data(seed=1, n=700, q=90, dim=16):
    rng = np.random.default_rng(seed)
    X = normalize(rng.standard_normal((n, dim)))
    X[5] = 0
    X[9] = X[3]  # a duplicate corpus row: a real neighbour, ties broken by the lower index
    X[600:640] = X[600]  # many exact ties: rows whose k-th score is shared by dozens
    Q = normalize(rng.standard_normal((q, dim)))
    Q[0] = 0  # an all-zero query: no neighbours
    Q[4], Q[7], Q[8] = X[3], X[11], X[600]
    exclude = np.full(q, -1, np.int64)
    exclude[[4, 7, 10]] = [3, 11, 20]  # queries whose id is a corpus id
    return X, Q, exclude


def _run(corpus, Q, exclude, config, passes):
    out = []
    for rows in passes:
        p = QueryPass(corpus, Q[rows.start:rows.stop], rows, exclude[rows.start:rows.stop], config)
        out += [e for e in p.run() if isinstance(e, PartialList)]
    return np.concatenate([o.neighbors for o in out]), np.concatenate([o.scores for o in out]), out


@pytest.mark.parametrize("k, min_score, budget", [(5, None, 1 << 20), (10, 0.1, 1 << 13), (1, None, 1 << 13),
                                                  (45, None, 1 << 16), (800, -0.5, 1 << 20)])
def test_query_passes_equal_brute_force(k, min_score, budget):
    X, Q, exclude = _data()
    config = KernelConfig(k, min_score, budget, 2)
    passes = query_passes(0, len(Q), config, X.shape[1], len(X))
    nb, sc, lists = _run(Corpus([X[:300], X[300:]]), Q, exclude, config, passes)
    want_nb, want_sc = brute_queries(Q, X, k, min_score, exclude)
    assert np.array_equal(nb, want_nb)
    assert np.array_equal(sc, want_sc, equal_nan=True)
    assert all(item.columns == (0,) for item in lists)
    if budget == 1 << 13:
        assert len(passes) > 1  # heaps bounded by the budget: several passes


def test_a_query_row_equal_to_a_corpus_row_is_kept_unless_excluded():
    X, Q, exclude = _data()
    nb, sc, _ = _run(Corpus([X]), Q, exclude, KernelConfig(3, None, 1 << 20, 1), [range(0, len(Q))])
    assert nb[7, 0] != 11 and 11 not in nb[7]  # same id: excluded
    assert nb[8, 0] == 600 and sc[8, 0] == 1.0  # same vector, another id: a real neighbour, the lowest index first
    assert (nb[0] == -1).all() and np.isnan(sc[0]).all()  # an all-zero query has none


def test_a_pass_snapshotted_between_steps_resumes_bit_for_bit():
    X, Q, exclude = _data(n=3000, dim=8)
    config = KernelConfig(4, None, 1 << 20, 2)
    rows = range(0, len(Q))
    whole = QueryPass(Corpus([X]), Q, rows, exclude, config)
    whole.steps = [(a, min(len(X), a + 512)) for a in range(0, len(X), 512)]  # several steps
    expected = [e for e in whole.run() if isinstance(e, PartialList)][0]
    first = QueryPass(Corpus([X]), Q, rows, exclude, config)
    first.steps = whole.steps
    for event in first.run():
        if isinstance(event, StepDone) and event.step == 2:
            snapshot = first.snapshot()
            break
    again = QueryPass(Corpus([X]), Q, rows, exclude, config)
    again.steps = whole.steps
    again.restore(snapshot)
    got = [e for e in again.run() if isinstance(e, PartialList)][0]
    assert np.array_equal(got.neighbors, expected.neighbors)
    assert np.array_equal(got.scores, expected.scores, equal_nan=True)


def test_the_excluded_row_is_taken_out_and_order_kept():
    nb = np.array([[4, 2, 7], [1, 3, 5], [-1, -1, -1], [9, 8, -1]])
    sc = np.array([[0.9, 0.8, 0.7], [0.9, 0.5, 0.1], [np.nan] * 3, [0.3, 0.2, np.nan]], np.float32)
    got_nb, got_sc = without_excluded(nb, sc, np.array([2, -1, 4, 9]))
    assert got_nb.tolist() == [[4, 7], [1, 3], [-1, -1], [8, -1]]
    assert np.array_equal(got_sc, np.array([[0.9, 0.7], [0.9, 0.5], [np.nan] * 2, [0.2, np.nan]], np.float32),
                          equal_nan=True)


# ---- Preprocess: the query chunk files ------------------------------------------------------------------------

from steps import preprocess as pre  # noqa: E402
from steps.errors import StepError  # noqa: E402
from steps.formats import queries as query_format  # noqa: E402
from tests.test_preprocess import names, write_parquet  # noqa: E402


def preprocess_both(root, corpus, corpus_ids, queries, query_ids, *args):
    write_parquet(root / "processing/input/matrix/corpus.parquet", corpus, corpus_ids)
    write_parquet(root / "processing/input/queries/queries.parquet", queries, query_ids)
    pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/", *args])
    out = root / "processing/output/queries"
    return out, query_format.read_manifest(out)


@pytest.fixture
def opt_ml(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("rows, files, expected", [(50, 8, [6, 6, 6, 7, 6, 6, 6, 7]), (3, 8, [1, 1, 1]),
                                                   (20, 20, [1] * 20)])
def test_query_files_are_balanced_by_count_and_self_contained(opt_ml, rows, files, expected):
    rng = np.random.default_rng(0)
    corpus, queries = rng.standard_normal((30, 4)), rng.standard_normal((rows, 4))
    query_ids = names(rows, start=25)  # item-00025 .. item-00029 are corpus ids too
    out, manifest = preprocess_both(opt_ml, corpus, names(30), queries, query_ids, f"--query-files={files}")
    assert [e["stop"] - e["start"] for e in manifest["files"]] == expected  # row counts differ by at most one
    assert manifest["excluded"] == min(rows, 5) and manifest["self_rule"] == "exclude-same-id"
    got = [query_format.read_chunk(out / e["file"], 30, 4) for e in manifest["files"]]
    assert np.array_equal(np.concatenate([c.vectors for c in got]), normalize(queries))
    assert np.concatenate([c.exclude for c in got]).tolist() == [25 + i if i < 5 else -1 for i in range(rows)]
    assert {c.fingerprint for c in got} == {manifest["fingerprint"]}
    assert [c.sha256 for c in got] == [e["sha256"] for e in manifest["files"]]
    assert not (opt_ml / "processing/scratch/queries-normalized").exists()


def test_self_rule_keep_and_a_dimension_mismatch(opt_ml):
    rng = np.random.default_rng(0)
    out, manifest = preprocess_both(opt_ml, rng.standard_normal((10, 4)), names(10), rng.standard_normal((4, 4)),
                                    names(4), "--self-rule=keep")
    assert manifest["excluded"] == 0 and manifest["self_rule"] == "keep"
    write_parquet(opt_ml / "processing/input/queries/queries.parquet", rng.standard_normal((4, 3)), names(4))
    with pytest.raises(StepError) as info:
        pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/"])
    assert str(info.value) == ("the queries (s3://b/queries/) have 3 features per row, the corpus 4: point "
                               "QueryData at vectors of the corpus's dimension")
    assert query_format.read_manifest(out)["rows"] == 4  # the earlier output is intact
