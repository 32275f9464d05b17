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
from pipeline.local.jobs import shard_by_s3_key  # noqa: E402


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


def test_a_bad_query_input_names_the_queries_and_their_settings(opt_ml):
    rng = np.random.default_rng(0)
    write_parquet(opt_ml / "processing/input/matrix/corpus.parquet", rng.standard_normal((10, 4)), names(10))
    queries = rng.standard_normal((4, 4))
    queries[2, 1] = np.nan
    write_parquet(opt_ml / "processing/input/queries/queries.parquet", queries, names(4))
    with pytest.raises(StepError) as info:
        pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/"])
    assert str(info.value) == ("the queries (s3://b/queries/): queries.parquet row 2 column 'f1': value is NaN or "
                               "missing; fix the input, or set input.non_finite: drop in pipeline.yaml to drop such "
                               "rows")
    write_parquet(opt_ml / "processing/input/queries/queries.parquet", queries[:0], [])
    with pytest.raises(StepError) as info:
        pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/"])
    assert str(info.value) == ("the queries (s3://b/queries/): queries.parquet: no data rows; point QueryData at a "
                               "matrix with at least one row")


def test_queries_take_the_corpus_reading_settings_and_dense_vectors_only(opt_ml):
    import pyarrow as pa
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    corpus, queries = rng.standard_normal((10, 4)), rng.standard_normal((3, 4))
    for name, m, ids in (("matrix/corpus", corpus, names(10)), ("queries/queries", queries, names(3, start=20))):
        (opt_ml / f"processing/input/{name}.parquet").parent.mkdir(parents=True)
        pq.write_table(pa.table({"name": ids, "emb": list(m)}),
                       opt_ml / f"processing/input/{name}.parquet")
    pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/", "--vector-column=emb"])
    out = opt_ml / "processing/output/queries"
    manifest = query_format.read_manifest(out)
    got = [query_format.read_chunk(out / e["file"], 10, 4) for e in manifest["files"]]
    assert np.array_equal(np.concatenate([c.vectors for c in got]), normalize(queries))  # the corpus's column name
    (opt_ml / "processing/input/queries/queries.parquet").unlink()
    sp.save_npz(opt_ml / "processing/input/queries/queries.npz", sp.csr_matrix(queries))
    with pytest.raises(StepError) as info:
        pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/"])
    assert str(info.value) == ("the queries (s3://b/queries/) are sparse .npz: queries mode takes dense vectors "
                               "(.npy, parquet or CSV of the corpus's dimension)")
    (opt_ml / "processing/input/matrix/corpus.parquet").unlink()
    (opt_ml / "processing/output/normalized/manifest.json").unlink()  # Preprocess rewrites the corpus first
    sp.save_npz(opt_ml / "processing/input/matrix/corpus.npz", sp.csr_matrix(corpus))
    with pytest.raises(StepError) as info:
        pre.main(["--input-uri=s3://b/corpus/", "--query-uri=s3://b/queries/"])
    assert str(info.value).endswith(" is sparse .npz: the sparse kernel runs self-joins only; use mode: all_pairs, "
                                    "or give dense .npy/parquet/CSV")


# ---- the pipeline end to end: `python -m pipeline run` in queries mode ------------------------------------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402

from pipeline.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def queries_spec(tmp_path, files, rule="exclude-same-id"):
    text = (REPO / "pipeline.yaml").read_text()
    text = text.replace("parameters:\n  InputData:", "mode: queries\nqueries:\n  chunk_files: %d\n  self_rule: %s\n"
                        "parameters:\n  QueryData: s3://my-bucket/allpairs/queries/\n  InputData:" % (files, rule), 1)
    path = tmp_path / f"queries-{files}-{rule}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def corpus_and_queries(tmp_path_factory):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    X[40] = 0
    Q = rng.standard_normal((37, 12)).astype(np.float32)
    Q[2] = X[10]  # the same vector as corpus row 10, under corpus id item-00010: excluded by the self rule
    Q[3] = X[11]  # the same vector as corpus row 11, under an id of its own: a real neighbour
    corpus_ids = names(300)
    query_ids = [f"q-{i:03d}" for i in range(37)]
    query_ids[2] = "item-00010"
    root = tmp_path_factory.mktemp("queries-data")
    write_parquet(root / "corpus.parquet", X, corpus_ids)
    write_parquet(root / "queries.parquet", Q, query_ids)
    return root, X, Q, corpus_ids, query_ids


def run_queries(tmp_path, root, spec, hosts, *params):
    out = tmp_path / "out"
    args = ["run", "--spec", str(spec), "--workdir", str(tmp_path / "work"), "--param",
            f"InputData={root / 'corpus.parquet'}", "--param", f"QueryData={root / 'queries.parquet'}",
            "--param", f"OutputPrefix={out}", "--param", f"InstanceCount={hosts}", "--param", "TopK=6", *params]
    assert main(args) == 0
    (artifact,) = out.glob("*/artifact")
    return artifact


@pytest.mark.parametrize("hosts", [2, 4, 6])  # fewer hosts than the 4 query files, as many, more
def test_queries_mode_end_to_end_matches_brute_force_for_any_host_count(tmp_path, corpus_and_queries, hosts):
    root, X, Q, corpus_ids, query_ids = corpus_and_queries
    artifact = run_queries(tmp_path, root, queries_spec(tmp_path, 4), hosts)
    exclude = np.full(len(Q), -1)
    exclude[2] = 10
    want_nb, want_sc = brute_queries(normalize(Q), normalize(X), 6, None, exclude)
    assert np.array_equal(np.load(artifact / "neighbors.npy"), want_nb)
    assert np.array_equal(np.load(artifact / "scores.npy"), want_sc, equal_nan=True)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["mode"] == "queries" and manifest["rows"] == 37 and manifest["corpus"]["rows"] == 300
    assert manifest["self_rule"] == "exclude-same-id" and manifest["queries_with_their_id_in_the_corpus"] == 1
    received = [h["query_files"] for h in manifest["hosts"]]
    assert sorted(f for files in received for f in files) == sorted(
        f"query-{a:012d}-{b:012d}.npz" for a, b in [(0, 9), (9, 18), (18, 27), (27, 37)])
    assert [len(files) for files in received] == [len(s) for s in shard_by_s3_key(list(range(4)), hosts)]
    edges = pq.read_table(artifact / "neighbors.parquet").to_pandas()
    assert edges["id"].iloc[0] == query_ids[0] and set(edges["neighbor_id"]) <= set(corpus_ids)
    first = edges[edges["id"] == query_ids[3]].iloc[0]
    assert (first["neighbor_id"], first["score"]) == ("item-00011", 1.0)
    assert "item-00010" not in set(edges[edges["id"] == "item-00010"]["neighbor_id"])
    corpus = pq.read_table(artifact / "corpus.parquet").to_pandas()
    assert corpus["id"].tolist() == corpus_ids and corpus["row"].tolist() == list(range(300))
    assert set(manifest["files"]) >= {"corpus.parquet", "neighbors.npy", "rows.parquet", "id_index.parquet"}
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "work").glob("executions/*/Similarity/*/job.log")}
    for host, files in zip([h["host"] for h in manifest["hosts"]], received):
        said = f"{host}: received {len(files)} query chunk file(s) of 37 query rows: {', '.join(files)}" if files else \
            f"{host}: received no query chunk file"
        assert said in logs[host]  # each host says which files it got (none: an empty shard, which Merge accepts)


def test_queries_mode_self_rule_keep(tmp_path, corpus_and_queries):
    root, X, Q, corpus_ids, query_ids = corpus_and_queries
    artifact = run_queries(tmp_path, root, queries_spec(tmp_path, 3, "keep"), 2)
    want_nb, want_sc = brute_queries(normalize(Q), normalize(X), 6)
    assert np.array_equal(np.load(artifact / "neighbors.npy"), want_nb)
    assert np.load(artifact / "neighbors.npy")[2, 0] == 10  # its own id's row, kept: score 1.0


# ---- the spec and the compiled definition ---------------------------------------------------------------------

from pipeline.compile import compile_definition  # noqa: E402
from pipeline.errors import SpecError  # noqa: E402
from pipeline.spec import load_spec  # noqa: E402
from tests.test_compile import SCHEMA, _errors, get, option, run_uri  # noqa: E402

QUERIES_OUT = {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['queries'].S3Output.S3Uri"}


@pytest.fixture(scope="module")
def queries_definition(tmp_path_factory):
    return json.loads(compile_definition(load_spec(queries_spec(tmp_path_factory.mktemp("spec"), 12)), cached=False))


def test_queries_definition_shards_the_query_files_and_replicates_the_corpus(queries_definition):
    steps = {s["Name"]: s for s in queries_definition["Steps"]}
    assert [p["Name"] for p in queries_definition["Parameters"]][-1] == "QueryData"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in steps["Similarity"]["Arguments"]["InputDataConfig"]}
    assert channels["normalized"]["S3DataDistributionType"] == "FullyReplicated"
    assert channels["queries"] == {"S3DataType": "S3Prefix", "S3DataDistributionType": "ShardedByS3Key",
                                   "S3Uri": {"Std:Join": {"On": "/", "Values": [QUERIES_OUT, "chunks"]}}}
    assert steps["Similarity"]["Arguments"]["HyperParameters"]["mode"] == "queries"
    pre = steps["Preprocess"]["Arguments"]
    assert pre["ProcessingInputs"][1]["S3Input"]["S3Uri"] == get("QueryData")
    assert pre["ProcessingOutputConfig"]["Outputs"][1]["S3Output"]["S3Uri"] == run_uri("queries")
    args = pre["AppSpecification"]["ContainerArguments"]
    assert option("query-uri", get("QueryData")) in args
    assert "--query-files=12" in args and "--self-rule=exclude-same-id" in args
    merge = steps["Merge"]["Arguments"]
    assert "--mode=queries" in merge["AppSpecification"]["ContainerArguments"]
    assert merge["ProcessingInputs"][2]["S3Input"]["S3Uri"] == QUERIES_OUT


def test_queries_definition_validates_against_the_patched_schema(queries_definition):
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not present (it lives beside the repository, in ../shared)")
    schema = json.loads(SCHEMA.read_text())
    for step in queries_definition["Steps"]:
        assert _errors(schema, {"Processing": "ProcessingStep", "Training": "TrainingStep"}[step["Type"]], step) == []
    for parameter in queries_definition["Parameters"]:
        assert _errors(schema, {"String": "StringParameter", "Integer": "IntegerParameter",
                                "Float": "FloatParameter"}[parameter["Type"]], parameter) == []


def spec_error(tmp_path, text):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value).replace(str(path), "pipeline.yaml").replace(path.name, "pipeline.yaml")


def test_the_mode_and_its_parameter_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = (REPO / "pipeline.yaml").read_text()
    assert spec_error(tmp_path, shipped.replace("parameters:\n", "mode: queries\nparameters:\n", 1)) == (
        "pipeline.yaml:21: parameters.QueryData: required in mode: queries (queries mode: the query rows, a file "
        "or a prefix like InputData (each gets its top-k among InputData)); add it to parameters")
    assert spec_error(tmp_path, shipped.replace("parameters:\n", "parameters:\n  QueryData: s3://bucket/q/\n", 1)) == (
        "pipeline.yaml:20: parameters.QueryData: a parameter of mode: queries only, and this spec's mode is "
        "all_pairs; remove it, or set mode: queries")
    assert spec_error(tmp_path, shipped + "queries:\n  chunk_files: 8\n") == (
        f"pipeline.yaml:{shipped.count(chr(10)) + 2}: queries.chunk_files: the queries section is for mode: queries only, and this spec's mode "
        "is all_pairs; remove it, or set mode: queries")
    assert spec_error(tmp_path, shipped.replace("parameters:\n", "mode: query\nparameters:\n", 1)) == (
        "pipeline.yaml:19: mode: must be one of 'all_pairs', 'queries', got 'query'; did you mean 'queries'?")


def test_the_corpus_queried_against_itself_is_the_self_join_byte_for_byte(tmp_path, corpus_and_queries):
    """Every query's id is a corpus id: excluding it is the self-join's "never its own neighbour"."""
    root, X, Q, corpus_ids, query_ids = corpus_and_queries
    out = tmp_path / "self-join"
    assert main(["run", "--workdir", str(tmp_path / "w2"), "--param", f"InputData={root / 'corpus.parquet'}",
                 "--param", f"OutputPrefix={out}", "--param", "InstanceCount=2", "--param", "TopK=6"]) == 0
    (self_join,) = out.glob("*/artifact")
    queries = run_queries(tmp_path, root, queries_spec(tmp_path, 5), 3,
                          "--param", f"QueryData={root / 'corpus.parquet'}")
    for name in ("neighbors.npy", "scores.npy", "neighbors.parquet", "rows.parquet", "id_index.parquet"):
        assert (queries / name).read_bytes() == (self_join / name).read_bytes(), name


# ---- hosts: which files they got, checkpoints and stops; Merge's coverage check ---------------------------------

import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from steps import merge  # noqa: E402
from steps.contract import BLOCK_ROWS_ENV, CHECKPOINT_SECONDS_ENV, HOST_FAULT_ENV  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A Preprocess output of a 2000-row corpus and 30 queries in 4 files."""
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(5)
    X, Q = rng.standard_normal((2000, 8)), rng.standard_normal((30, 8))
    write_parquet(root / "processing/input/matrix/corpus.parquet", X, names(2000))
    write_parquet(root / "processing/input/queries/queries.parquet", Q, names(30, start=1990))
    old = os.environ.get("ALLPAIRS_OPT_ML")
    os.environ["ALLPAIRS_OPT_ML"] = str(root)
    try:
        assert pre.run(["--input-uri=c", "--query-uri=q", "--query-files=4"]) == 0
    finally:
        os.environ.pop("ALLPAIRS_OPT_ML") if old is None else os.environ.update(ALLPAIRS_OPT_ML=old)
    out = root / "processing/output"
    exclude = np.full(30, -1)
    exclude[:10] = np.arange(1990, 2000)
    return out / "normalized", out / "queries", normalize(X), normalize(Q), exclude


def run_query_host(root, prepared, files, checkpoints_dir, name="algo-1", hosts=("algo-1",), fault=None):
    normalized, queries = prepared[:2]
    channel = root / "input/data/queries"
    if not channel.exists():
        (root / "input/config").mkdir(parents=True)
        channel.mkdir(parents=True)
        for f in files:
            (channel / f).symlink_to(queries / "chunks" / f)
        (root / "input/data/normalized").symlink_to(normalized)
        checkpoints_dir.mkdir(exist_ok=True)
        (root / "checkpoints").symlink_to(checkpoints_dir)
    shutil.rmtree(root / "model", ignore_errors=True)
    (root / "model").mkdir()
    (root / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": name, "hosts": list(hosts)}))
    (root / "input/config/hyperparameters.json").write_text(json.dumps(
        {"top_k": "4", "min_score": "-1", "memory_budget_mb": "16", "threads": "1", "mode": "queries"}))
    env = {**os.environ, "ALLPAIRS_OPT_ML": str(root), CHECKPOINT_SECONDS_ENV: "0", BLOCK_ROWS_ENV: "512",
           "TRAINING_JOB_NAME": "allpairs-similarity-q"}
    env.pop(HOST_FAULT_ENV, None)
    if fault:
        env[HOST_FAULT_ENV] = fault
    proc = subprocess.run([sys.executable, "-m", "steps.similarity"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def chunk_names(prepared):
    return [Path(e["file"]).name for e in query_format.read_manifest(prepared[1])["files"]]


def merge_query_shards(tmp_path, prepared, models, tag="m"):
    shards = tmp_path / f"shards-{tag}"
    shards.mkdir()
    for model in models:
        for f in model.iterdir():
            shutil.copy(f, shards / f.name)
    root = tmp_path / f"merge-{tag}"
    (root / "processing/input").mkdir(parents=True)
    (root / "processing/input/shards").symlink_to(shards)
    (root / "processing/input/normalized").symlink_to(prepared[0])
    (root / "processing/input/queries").symlink_to(prepared[1])
    old = os.environ.get("ALLPAIRS_OPT_ML")
    os.environ["ALLPAIRS_OPT_ML"] = str(root)
    try:
        code = merge.run(["--execution-id", tag, "--artifact-uri", f"s3://b/{tag}", "--mode=queries"])
    finally:
        os.environ.pop("ALLPAIRS_OPT_ML") if old is None else os.environ.update(ALLPAIRS_OPT_ML=old)
    return code, root


def test_sigterm_and_kill_in_a_query_pass_resume_bit_for_bit(tmp_path, prepared):
    files = chunk_names(prepared)
    ck = tmp_path / "ck"
    ck.mkdir()
    code, out = run_query_host(tmp_path / "ref", prepared, files, tmp_path / "ck-ref")
    assert code == 0, out
    reference = (tmp_path / "ref/model/shard-algo-1.neighbors.npy").read_bytes()
    code, out = run_query_host(tmp_path / "h", prepared, files, ck, fault="after-checkpoints=2;signal=TERM")
    assert code == 1, out
    assert out.splitlines()[-1] == ("similarity: stopped by SIGTERM; the pass of query rows [0, 7) stopped with 2 "
                                    "of 4 steps done; all of it is in checkpoints and a restart resumes from there")
    assert [p.name for p in ck.iterdir() if p.name.startswith("rows-")] == [
        f"rows-000000000000-000000000007.{p.name.split('.')[1]}.ckpt" for p in ck.glob("rows-*")]
    code, out = run_query_host(tmp_path / "h", prepared, files, ck, fault="after-checkpoints=7")  # killed later
    assert code != 0 and "resuming the pass of query rows [0, 7) from checkpoints: 2 of 4 steps done" in out, out
    code, out = run_query_host(tmp_path / "h", prepared, files, ck)
    assert code == 0, out
    assert "reusing the finished pass of query rows [0, 7) from checkpoints" in out
    assert (tmp_path / "h/model/shard-algo-1.neighbors.npy").read_bytes() == reference


def test_merge_names_query_files_covered_by_no_host_or_by_two(tmp_path, prepared):
    files = chunk_names(prepared)
    ck = tmp_path / "ck"
    ck.mkdir()
    two = ("algo-1", "algo-2")
    for name, mine in (("algo-1", files[:2]), ("algo-2", files[2:])):
        assert run_query_host(tmp_path / name, prepared, mine, ck, name, two)[0] == 0
    code, root = merge_query_shards(tmp_path, prepared, [tmp_path / "algo-1/model", tmp_path / "algo-2/model"])
    assert code == 0, (root / "output/message").read_text()
    _, _, X, Q, exclude = prepared
    want_nb, want_sc = brute_queries(Q, X, 4, None, exclude)
    out = root / "processing/output/artifact"
    assert np.array_equal(np.load(out / "neighbors.npy"), want_nb)
    assert np.array_equal(np.load(out / "scores.npy"), want_sc, equal_nan=True)
    # a host that processed a file another host did too, and a file nobody did
    assert run_query_host(tmp_path / "dup", prepared, files[1:3], ck, "algo-2", two)[0] == 0
    code, root = merge_query_shards(tmp_path, prepared, [tmp_path / "algo-1/model", tmp_path / "dup/model"], "dup")
    assert code == 1
    assert (root / "output/message").read_text() == (
        f"merge: query chunk file(s) {files[3]} covered by no host; {files[1]} covered by hosts algo-1, algo-2: "
        "each query row must be covered exactly once (ShardedByS3Key gives each file to one host): rerun the "
        "Similarity step\n")
    assert not (root / "processing/output/artifact/manifest.json").exists()


def test_a_host_without_query_files_writes_an_empty_shard(tmp_path, prepared):
    code, out = run_query_host(tmp_path / "empty", prepared, [], tmp_path / "ck-e")
    assert code == 0, out
    assert out.splitlines()[0] == ("algo-1: received no query chunk file (ShardedByS3Key gives each host about 1/n of "
                                   "the files, and there are fewer files than hosts): writing an empty shard")
    meta = json.loads((tmp_path / "empty/model/shard-algo-1.json").read_text())
    assert (meta["mode"], meta["rows"], meta["lists"], meta["query_files"]) == ("queries", 0, [], [])
