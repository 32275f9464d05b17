"""The inputs users have, beside a dense .npy: parquet vector columns (list, large_list, fixed_size_list; float16
and integer values), compressed CSV, TSV and other delimiters, float16 .npy. Each gives the artifact the
equivalent dense .npy gives, byte for byte; each bad form gets a one-line error naming file, row and column."""
from __future__ import annotations

import bz2
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps import preprocess
from steps.contract import ARTIFACT_DATA_FILES
from steps.errors import StepError
from steps.input_shape import local_input, read_shape
from tests.test_steps import run_hosts, run_merge, use_root

ROWS, DIM = 90, 7
README = Path(__file__).resolve().parent.parent / "README.md"


def matrix(dtype=np.float64) -> np.ndarray:
    x = np.random.default_rng(3).normal(size=(ROWS, DIM))
    x[20] = x[4]  # a tie
    x[33] = 0  # a zero row
    return np.round(x, 4).astype(dtype)


def frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({f"f{j}": x[:, j] for j in range(x.shape[1])})


def csv_text(x: np.ndarray, sep: str = ",") -> bytes:
    return frame(x).to_csv(index=False, sep=sep, float_format="%.17g").encode()


def vectors(x: np.ndarray, list_type: pa.DataType, **columns) -> pa.Table:
    return pa.table({**columns, "embedding": pa.array([list(row) for row in x], type=list_type)})


def artifact_of(monkeypatch, tmp_path, name, write, *args):
    """Preprocess -> 3 hosts -> Merge on the input `write` makes; (the artifact folder, Preprocess's manifest)."""
    root = use_root(monkeypatch, tmp_path / name)
    folder = root / "processing/input/matrix"
    folder.mkdir(parents=True)
    write(folder)
    assert preprocess.run(["--input-uri", "in", "--chunk-rows", "40", *args]) == 0, \
        (root / "output/message").read_text()
    normalized = root / "processing/output/normalized"
    model = run_hosts(monkeypatch, tmp_path / name, normalized, hosts=3, k=4)
    code, merged, out = run_merge(monkeypatch, tmp_path / name, normalized, model, name, top_k=4)
    assert code == 0, (merged / "output/message").read_text()
    return out, json.loads((normalized / "manifest.json").read_text())


def same_artifact(a, b) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ARTIFACT_DATA_FILES)


FLOAT64_FORMS = {  # each holds matrix() as float64 values, ids the row numbers
    "csv.gz": (lambda d: (d / "m.csv.gz").write_bytes(gzip.compress(csv_text(matrix()))), ()),
    "csv.bz2": (lambda d: (d / "m.csv.bz2").write_bytes(bz2.compress(csv_text(matrix()))), ()),
    "tsv": (lambda d: (d / "m.tsv").write_bytes(csv_text(matrix(), "\t")), ()),
    "tsv.gz prefix": (lambda d: [(d / f"part-{i}.tsv.gz").write_bytes(gzip.compress(csv_text(part, "\t")))
                                 for i, part in enumerate(np.array_split(matrix(), 3))], ()),
    "semicolons": (lambda d: (d / "m.csv").write_bytes(csv_text(matrix(), ";")), ("--delimiter", ";")),
    "pipes in a .txt-less .csv.gz": (lambda d: (d / "m.csv.gz").write_bytes(gzip.compress(csv_text(matrix(), "|"))),
                                     ("--delimiter", "|")),
    "parquet list<double>": (lambda d: pq.write_table(vectors(matrix(), pa.list_(pa.float64())), d / "m.parquet"), ()),
    "parquet large_list<double> + ignored text":
        (lambda d: pq.write_table(vectors(matrix(), pa.large_list(pa.float64()), text=[f"doc-{i}" for i in range(ROWS)],
                                          label=np.arange(ROWS, dtype=np.float64)), d / "m.parquet"),
         ("--id-column", "text", "--vector-column", "embedding")),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The artifacts of the dense .npy forms, by dtype."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("reference")
    try:
        return {dtype: artifact_of(mp, tmp, dtype, lambda d, t=dtype: np.save(d / "m.npy", matrix(t)))[0]
                for dtype in ("float64", "float32", "float16", "int32")}
    finally:
        mp.undo()


@pytest.mark.parametrize("form", FLOAT64_FORMS, ids=str)
def test_float64_forms_give_the_artifact_of_the_float64_npy(monkeypatch, tmp_path, reference, form):
    write, args = FLOAT64_FORMS[form]
    if "text" in form:  # ids from a text column: not the same ids, so compare the numbers only
        write_plain, args_plain = FLOAT64_FORMS["parquet list<double>"]
        out, manifest = artifact_of(monkeypatch, tmp_path, "form", write, *args)
        assert manifest["input"]["vector_column"] == "embedding"
        assert manifest["input"]["ignored_columns"] == ["label"]
        for name in ("neighbors.npy", "scores.npy"):
            assert (out / name).read_bytes() == (reference["float64"] / name).read_bytes()
        return
    out, manifest = artifact_of(monkeypatch, tmp_path, "form", write, *args)
    assert manifest["rows"] == ROWS and manifest["dim"] == DIM
    assert same_artifact(out, reference["float64"])


@pytest.mark.parametrize("dtype, arrow_type", [
    ("float32", pa.list_(pa.float32(), DIM)),  # fixed_size_list
    ("float32", pa.list_(pa.float32())),
    ("float16", pa.list_(pa.float16())),
    ("int32", pa.large_list(pa.int32())),
], ids=["fixed_size_list<float>", "list<float>", "list<halffloat>", "large_list<int32>"])
def test_vector_columns_of_each_type_give_the_artifact_of_the_npy_of_that_type(monkeypatch, tmp_path, reference,
                                                                                dtype, arrow_type):
    values = matrix(np.float64) * (100 if dtype == "int32" else 1)
    x = values.astype(dtype)
    out, manifest = artifact_of(monkeypatch, tmp_path, "vec",
                                lambda d: pq.write_table(vectors(x, arrow_type), d / "m.parquet"))
    assert manifest["input"]["source_dtype"] == dtype
    if dtype == "int32":  # the reference int32 .npy holds the unscaled values: compare with a fresh one
        ref, _ = artifact_of(monkeypatch, tmp_path, "int-npy", lambda d: np.save(d / "m.npy", x))
        assert same_artifact(out, ref)
    else:
        assert same_artifact(out, reference[dtype])


def test_string_ids_beside_a_vector_column_need_no_setup(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(vectors(matrix(), pa.list_(pa.float32()), doc=[f"d{i}" for i in range(ROWS)]), folder / "m.parquet")
    manifest = preprocess.preprocess(folder, tmp_path / "out", "in")
    assert (manifest["ids"]["source"], manifest["ids"]["type"]) == ("column doc", "string")
    assert manifest["input"]["vector_column"] == "embedding" and manifest["input"]["ignored_columns"] == []


def test_null_vectors_follow_the_non_finite_policy(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [list(r) for r in matrix()]
    rows[5], rows[7][2] = None, None
    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float64()))}), folder / "m.parquet")
    with pytest.raises(StepError) as info:
        preprocess.preprocess(folder, tmp_path / "out", "in")
    assert str(info.value) == ("m.parquet row 5 column 'embedding' value 0: value is NaN or missing; fix the input, or "
                               "set input.non_finite: drop in pipeline.yaml to drop such rows")
    manifest = preprocess.preprocess(folder, tmp_path / "out", "in", non_finite="drop")
    assert manifest["rows"] == ROWS - 2 and manifest["dropped_sample"] == [
        "m.parquet row 5 column 'embedding' value 0: value is NaN or missing",
        "m.parquet row 7 column 'embedding' value 2: value is NaN or missing"]


def test_the_shape_is_read_cheaply_for_vector_columns_and_compressed_text(tmp_path):
    x = matrix()
    pq.write_table(vectors(x, pa.list_(pa.float32()), id=[str(i) for i in range(ROWS)]), tmp_path / "v.parquet")
    files, read = local_input(tmp_path / "v.parquet")
    shape = read_shape(files, read)
    assert (shape.rows, shape.dim, shape.exact, shape.source_bytes_per_value) == (ROWS, DIM, True, 4)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz/m.tsv.gz").write_bytes(gzip.compress(csv_text(x, "\t")))
    files, read = local_input(tmp_path / "gz")
    shape = read_shape(files, read)
    assert (shape.rows, shape.dim, shape.format) == (ROWS, DIM, "csv")


def fails(tmp_path, write, **options) -> str:
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder)
    with pytest.raises(StepError) as info:
        preprocess.preprocess(folder, tmp_path / "out", "in", **options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return str(info.value)


def parquet(table, name="m.parquet"):
    return lambda d: pq.write_table(table, d / name)


BAD = [
    ("two list columns", parquet(pa.table({"a": [[1.0]], "b": [[2.0]]})), {},
     "m.parquet: more than one list column of numbers ('a', 'b'); set input.vector_column in pipeline.yaml to the one "
     "holding the vectors"),
    ("named vector column missing", parquet(pa.table({"id": ["x"], "emb": [[1.0]]})), {"vector_column": "embedding"},
     "m.parquet: vector column 'embedding' (input.vector_column) not found; columns present: id, emb; fix "
     "input.vector_column in pipeline.yaml"),
    ("named vector column not a list", parquet(pa.table({"id": ["x"], "emb": [1.0]})), {"vector_column": "id"},
     "m.parquet: column 'id' (input.vector_column) is string, not a list of numbers; name the list column holding "
     "the vectors, or remove input.vector_column to read one numeric column per feature"),
    ("a vector of another length", parquet(pa.table({"emb": [[1.0, 2.0]] * 3 + [[1.0]]})), {},
     "m.parquet row 3 column 'emb': a vector of 1 values, but the input's vectors have 2; every vector must have the "
     "same length"),
    ("files of other lengths", lambda d: (pq.write_table(pa.table({"emb": [[1.0, 2.0]]}), d / "a.parquet"),
                                          pq.write_table(pa.table({"emb": [[1.0, 2.0, 3.0]]}), d / "b.parquet")), {},
     "b.parquet: column 'emb' holds vectors of 3 values, but a.parquet holds vectors of 2; every vector of the input "
     "must have the same length"),
    ("empty vectors", parquet(pa.table({"emb": pa.array([[], []], pa.list_(pa.float32()))})), {},
     "m.parquet: column 'emb' holds empty vectors (0 values); every vector needs at least one value"),
    ("only null vectors", parquet(pa.table({"emb": pa.array([None, None], pa.list_(pa.float32()))})), {},
     "m.parquet: column 'emb' holds no vectors (no rows, or every vector is null); point InputData at a matrix with "
     "at least one row"),
    ("two text columns beside vectors", parquet(pa.table({"doc": ["a"], "text": ["t"], "emb": [[1.0]]})), {},
     "more than one non-numeric column beside the vectors: 'doc' (m.parquet), 'text' (m.parquet); set "
     "input.id_column in pipeline.yaml to say which one holds the ids (the others are ignored)"),
    ("an unnamed numeric id beside vectors", parquet(pa.table({"user_id": [1, 2], "emb": [[1.0], [2.0]]})), {},
     "m.parquet: column 'user_id' is numeric and named like an id, but ids are row numbers unless named; set "
     "input.id_column: user_id in pipeline.yaml (or drop or rename the column)"),
    ("the vectors as the id column", parquet(pa.table({"emb": [[1.0]]})), {"id_column": "emb"},
     "m.parquet: column 'emb' holds the vectors, so it cannot be the id column (input.id_column); name the column "
     "holding the ids"),
    ("a list of strings as the id", parquet(pa.table({"tags": [["a"]], "f": [1.0]})), {},
     "m.parquet: column 'tags' is list<element: string>, so it cannot be the id column (ids are strings or "
     "integers); if it holds the vectors, store them as a list of numbers (float or int)"),
    ("vector column with npy", lambda d: np.save(d / "m.npy", np.ones((2, 2))), {"vector_column": "emb"},
     "vector column 'emb' was named (input.vector_column), but the input is .npy, whose rows are the vectors; "
     "remove input.vector_column"),
    ("vector column with csv", lambda d: (d / "m.csv").write_text("a,b\n1,2\n"), {"vector_column": "emb"},
     "vector column 'emb' was named (input.vector_column), but the input is CSV, which has one column per feature; "
     "remove input.vector_column, or provide parquet with a list column of that name"),
    ("bad value in a gzipped tsv",
     lambda d: (d / "m.tsv.gz").write_bytes(gzip.compress(b"id\ta\tb\nx\t1\t2\ny\t3\tfive\n")), {"id_column": "id"},
     "m.tsv.gz row 1 (line 3) column 'b': 'five' is not a number; fix the value, or make this column the id column "
     "with input.id_column"),
    ("ragged line in a gzipped tsv", lambda d: (d / "m.tsv.gz").write_bytes(gzip.compress(b"a\tb\n1\t2\n3\n4\t5\n")),
     {}, "m.tsv.gz line 3: 1 fields, but the header has 2; fix that line (a missing or extra tab, or a value with a "
         "tab that needs quotes)"),
    ("tabs read as commas", lambda d: (d / "m.csv").write_text("id\ta\nx\t1\n"), {},
     "m.csv: no feature columns (only the id column 'id\\ta'); the input needs at least one numeric column; the header "
     "looks '\\t'-separated, but this file is read as ','-separated: set input.delimiter: \"\\t\" in pipeline.yaml"),
    ("commas read as semicolons", lambda d: (d / "m.csv").write_text("id,a\nx,1\n"), {"delimiter": ";"},
     "m.csv: no feature columns (only the id column 'id,a'); the input needs at least one numeric column; the header "
     "looks ','-separated, but this file is read as ';'-separated: set input.delimiter: \",\" in pipeline.yaml"),
    ("csv and tsv in one prefix", lambda d: ((d / "a.csv").write_text("a,b\n1,2\n"),
                                             (d / "b.tsv").write_text("a\tb\n1\t2\n")), {},
     "mixed delimiters: a.csv is read as ','-separated but b.tsv as '\\t'-separated; put files of one kind under the "
     "input prefix, or set input.delimiter if they really share one"),
    ("an unknown compression", lambda d: (d / "m.csv.xz").write_bytes(b"x"), {},
     "m.csv.xz: unsupported file type '.xz'; the input may hold only .npy, .npz (scipy.sparse), .parquet, .csv or "
     ".tsv files (CSV and TSV may be compressed: .gz, .bz2, .zst) (remove or move this one)"),
    ("a corrupt gzip", lambda d: (d / "m.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n")[:-12] + b"garbage!" * 2),
     {}, "m.csv.gz: cannot be read or decompressed (zlib inflate failed: invalid distance too far back); copy it "
         "again, or give it the extension of its compression (.gz, .bz2, .zst; none for plain text)"),
    ("plain text named .gz", lambda d: (d / "m.csv.gz").write_bytes(b"a,b\n1,2\n"), {}, None),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case[0])
def test_bad_input_forms_get_one_line_errors(tmp_path, case):
    _, write, options, expected = case
    message = fails(tmp_path, write, **options)
    assert "\n" not in message
    if expected is None:  # zlib's own words for a stream that is not gzip vary by version: checked around them
        assert message.startswith("m.csv.gz: cannot be read or decompressed (") and message.endswith(
            "); copy it again, or give it the extension of its compression (.gz, .bz2, .zst; none for plain text)")
    else:
        assert message == expected


def test_the_readme_input_examples_run_as_written(tmp_path, monkeypatch):
    """README's input-format block (```py) writes files Preprocess reads, with the options its YAML block gives."""
    (snippet,) = re.findall(r"```py\n(.*?)```", README.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    options = {"m.csv": {"delimiter": ";"}, "m.parquet": {"id_column": "doc"}}
    for path in sorted(tmp_path.iterdir()):
        folder = tmp_path / f"in-{path.name}"
        folder.mkdir()
        path.rename(folder / path.name)
        manifest = preprocess.preprocess(folder, tmp_path / f"out-{path.name}", "in", **options.get(path.name, {}))
        assert (manifest["rows"], manifest["dim"]) == (200, 384), path.name
