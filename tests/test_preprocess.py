"""Preprocess step: readers, normalization, chunking, ids, manifest, and every error message word for word."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps import preprocess as pre
from steps.errors import StepError, run_step
from steps.io import sha256_file, sha256_text

REPO = Path(__file__).resolve().parent.parent
URI = "s3://bucket/matrix/"


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(tmp_path))
    (tmp_path / "processing/input/matrix").mkdir(parents=True)
    return tmp_path


def matrix_dir(root: Path) -> Path:
    return root / "processing/input/matrix"


def out_dir(root: Path) -> Path:
    return root / "processing/output/normalized"


def run(*args: str) -> dict:
    pre.main(["--input-uri", URI, *args])
    return json.loads((out_dir_from_env() / "manifest.json").read_text())


def out_dir_from_env() -> Path:
    from steps.contract import NORMALIZED, here, processing_output_path
    return here(processing_output_path(NORMALIZED))


def fails(*args: str) -> str:
    with pytest.raises(StepError) as info:
        pre.main(["--input-uri", URI, *args])
    return str(info.value)


def read_output(root: Path) -> tuple[np.ndarray, list]:
    manifest = json.loads((out_dir(root) / "manifest.json").read_text())
    chunks = [np.load(out_dir(root) / c["file"]) for c in manifest["chunks"]]
    ids = pq.read_table(out_dir(root) / "ids.parquet").column("id").to_pylist()
    return np.concatenate(chunks), ids


def expected_normalized(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1, norms)).astype(np.float32)


def sample(rows: int = 40, dim: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def write_parquet(path: Path, x: np.ndarray, ids: list | None = None, id_name: str = "item_id") -> None:
    columns = {id_name: ids} if ids is not None else {}
    columns.update({f"f{j}": x[:, j] for j in range(x.shape[1])})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def write_csv(path: Path, x: np.ndarray, ids: list | None = None) -> None:
    frame = pd.DataFrame({f"f{j}": x[:, j] for j in range(x.shape[1])})
    if ids is not None:
        frame.insert(0, "item_id", ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.9g")


def names(n: int, start: int = 0) -> list[str]:
    return [f"item-{i:05d}" for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------- happy paths


def test_npy_rows_are_l2_normalized_with_row_number_ids(root):
    x = sample()
    np.save(matrix_dir(root) / "x.npy", x)
    manifest = run()
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert values.dtype == np.float32 and values.flags.c_contiguous
    assert ids == list(range(40))
    assert manifest["ids"] == {"file": "ids.parquet", "source": "row number", "type": "int64",
                               "sha256": sha256_file(out_dir(root) / "ids.parquet")}
    assert (manifest["format"], manifest["version"], manifest["rows"], manifest["dim"], manifest["dtype"]) == \
        ("allpairs.normalized", 2, 40, 5, "float32")
    assert manifest["input"]["format"] == "npy" and manifest["input"]["uri"] == URI
    assert manifest["input"]["source_dtype"] == "float32"
    assert manifest["input"]["files"] == [{"key": "x.npy", "bytes": (matrix_dir(root) / "x.npy").stat().st_size,
                                           "sha256": sha256_file(matrix_dir(root) / "x.npy"), "rows": 40}]
    assert manifest["input"]["fingerprint"] == sha256_text("x.npy", sha256_file(matrix_dir(root) / "x.npy"))
    assert manifest["fingerprint"] == sha256_text(*[c["sha256"] for c in manifest["chunks"]], manifest["ids"]["sha256"])
    assert not (out_dir(root) / ".partial").exists()


def test_parquet_string_ids_detected_without_setup(root):
    x = sample()
    write_parquet(matrix_dir(root) / "m.parquet", x, names(40))
    manifest = run()
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert ids == names(40)
    assert manifest["ids"]["source"] == "column item_id" and manifest["ids"]["type"] == "string"
    assert manifest["input"]["columns"] == ["f0", "f1", "f2", "f3", "f4"]


def test_csv_string_ids_and_float64_values(root):
    x = sample().astype(np.float64)
    write_csv(matrix_dir(root) / "m.csv", x, names(40))
    manifest = run()
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert ids == names(40)
    assert manifest["input"]["source_dtype"] == "float64"


def test_integer_input_and_integer_id_column(root):
    x = np.random.default_rng(1).integers(-5, 6, size=(30, 4)).astype(np.int64)
    write_parquet(matrix_dir(root) / "m.parquet", x, list(range(1000, 1030)), id_name="user")
    manifest = run("--id-column", "user")
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert ids == list(range(1000, 1030))
    assert manifest["ids"]["type"] == "int64" and manifest["input"]["source_dtype"] == "int64"


def test_prefix_of_several_files_read_in_key_order_skipping_markers(root):
    x = sample(rows=30)
    # key order: "a/part-0.npy" < "a/part-1.npy" < "b.npy", whatever order they were written in
    np.save(matrix_dir(root) / "b.npy", x[20:])
    (matrix_dir(root) / "a").mkdir()
    np.save(matrix_dir(root) / "a/part-1.npy", x[8:20])
    np.save(matrix_dir(root) / "a/part-0.npy", x[:8])
    (matrix_dir(root) / "_SUCCESS").write_text("")
    (matrix_dir(root) / ".DS_Store").write_bytes(b"\0junk")
    (matrix_dir(root) / "a/.part-0.npy.crc").write_bytes(b"crc")
    manifest = run()
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert ids == list(range(30))
    assert [f["key"] for f in manifest["input"]["files"]] == ["a/part-0.npy", "a/part-1.npy", "b.npy"]
    assert [f["rows"] for f in manifest["input"]["files"]] == [8, 12, 10]


def test_csv_prefix_with_different_column_order_and_empty_partition(root):
    x = sample(rows=20)
    write_csv(matrix_dir(root) / "part-0.csv", x[:12], names(12))
    (matrix_dir(root) / "part-1.csv").write_text("item_id,f0,f1,f2,f3,f4\n")  # empty partition, header only
    reordered = pd.DataFrame({"f4": x[12:, 4], "item_id": names(8, 12), **{f"f{j}": x[12:, j] for j in range(4)}})
    reordered.to_csv(matrix_dir(root) / "part-2.csv", index=False, float_format="%.9g")
    run()
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert ids == names(20)


def test_csv_streams_in_small_blocks_and_locates_late_errors(root, monkeypatch):
    monkeypatch.setattr("steps.readers.csv.CSV_BLOCK_BYTES", 512)  # many pyarrow blocks for a small file
    monkeypatch.setattr("steps.readers.base.BATCH_BUDGET_BYTES", 8 * 5 * 3)  # 3-row batches
    x = sample(rows=60)
    write_csv(matrix_dir(root) / "m.csv", x, names(60))
    manifest = run("--chunk-rows", "7")
    values, ids = read_output(root)
    np.testing.assert_allclose(values, expected_normalized(x), rtol=1e-6, atol=1e-7)
    assert ids == names(60) and len(manifest["chunks"]) == 9
    lines = (matrix_dir(root) / "m.csv").read_text().splitlines()
    item, _, rest = lines[52].split(",", 2)  # line 53: data row 51; its f0 becomes text
    lines[52] = f"{item},oops,{rest}"
    (matrix_dir(root) / "m.csv").write_text("\n".join(lines) + "\n")
    assert fails("--id-column", "item_id") == (
        "m.csv row 51 (line 53) column 'f0': 'oops' is not a number; "
        "fix the value, or make this column the id column with input.id_column")


def test_parquet_in_small_batches_finds_duplicates_across_batches(root, monkeypatch):
    monkeypatch.setattr("steps.readers.base.BATCH_BUDGET_BYTES", 8 * 5 * 4)  # 4-row batches
    ids = names(30)
    ids[25] = ids[2]
    write_parquet(matrix_dir(root) / "m.parquet", sample(rows=30), ids)
    assert fails() == ("duplicate id 'item-00002': m.parquet row 2 and m.parquet row 25; "
                       "ids must be unique: fix the id column (or name another with input.id_column)")


@pytest.mark.parametrize("chunk_rows", [1, 7, 25, 100])
def test_chunk_boundaries(root, chunk_rows):
    x = sample(rows=25)
    np.save(matrix_dir(root) / "x.npy", x)
    manifest = run("--chunk-rows", str(chunk_rows))
    starts = list(range(0, 25, chunk_rows))
    assert [(c["start"], c["stop"]) for c in manifest["chunks"]] == [(s, min(s + chunk_rows, 25)) for s in starts]
    assert [c["file"] for c in manifest["chunks"]] == [f"chunks/chunk-{i:06d}.npy" for i in range(len(starts))]
    for chunk in manifest["chunks"]:
        stored = np.load(out_dir(root) / chunk["file"])
        np.testing.assert_allclose(stored, expected_normalized(x[chunk["start"]:chunk["stop"]]), rtol=1e-6, atol=1e-7)
        assert chunk["sha256"] == sha256_file(out_dir(root) / chunk["file"])
    assert manifest["chunk_rows"] == chunk_rows


def test_zero_rows_stay_zero_and_are_counted(root):
    x = sample(rows=10)
    x[[2, 7]] = 0
    np.save(matrix_dir(root) / "x.npy", x)
    manifest = run()
    values, _ = read_output(root)
    assert manifest["zero_rows"] == 2
    assert not values[[2, 7]].any()
    np.testing.assert_allclose(np.linalg.norm(values[[0, 1, 3]], axis=1), 1, rtol=1e-6)


def test_extreme_magnitudes_neither_overflow_nor_underflow():
    values = np.array([[1e200, 1e200], [1e-200, -1e-200], [3.0, 4.0]])
    normalized, zero = pre.normalize_rows(values)
    np.testing.assert_allclose(normalized, [[0.70710677, 0.70710677], [0.70710677, -0.70710677], [0.6, 0.8]])
    assert not zero.any()


def test_same_input_gives_same_fingerprints(root):
    write_parquet(matrix_dir(root) / "m.parquet", sample(), names(40))
    first = run()
    second = run()
    assert (first["fingerprint"], first["input"]["fingerprint"]) == (second["fingerprint"], second["input"]["fingerprint"])


def test_sample_dataset(root):
    (matrix_dir(root) / "embeddings.parquet").write_bytes((REPO / "data/sample/embeddings.parquet").read_bytes())
    manifest = run()
    values, ids = read_output(root)
    assert (manifest["rows"], manifest["dim"], manifest["zero_rows"]) == (3000, 64, 2)
    assert ids[:2] == ["item-00000", "item-00001"] and manifest["ids"]["source"] == "column item_id"
    np.testing.assert_array_equal(values[10], values[2990])  # the duplicates survive, as real neighbours


# ---------------------------------------------------------------------------------------------- NaN / inf


def test_nan_is_an_error_naming_file_row_and_column(root):
    x = sample(rows=10)
    x[6, 3] = np.nan
    np.save(matrix_dir(root) / "x.npy", x)
    assert fails() == ("x.npy row 6 column 3: value is NaN or missing; "
                       "fix the input, or set input.non_finite: drop in pipeline.yaml to drop such rows")


def test_inf_in_csv_names_the_column_and_line(root):
    x = sample(rows=10)
    x[4, 1] = -np.inf
    write_csv(matrix_dir(root) / "m.csv", x, names(10))
    assert fails() == ("m.csv row 4 (line 6) column 'f1': value is -inf; "
                       "fix the input, or set input.non_finite: drop in pipeline.yaml to drop such rows")


def test_empty_csv_field_is_a_missing_value(root):
    (matrix_dir(root) / "m.csv").write_text("id,a,b\nx,1,2\ny,,3\n")
    assert fails() == ("m.csv row 1 (line 3) column 'a': value is NaN or missing; "
                       "fix the input, or set input.non_finite: drop in pipeline.yaml to drop such rows")


def test_drop_mode_drops_and_counts_rows(root):
    x = sample(rows=12)
    x[3, 0] = np.nan
    x[9, 4] = np.inf
    write_parquet(matrix_dir(root) / "m.parquet", x, names(12))
    manifest = run("--non-finite", "drop", "--chunk-rows", "4")
    values, ids = read_output(root)
    kept = [i for i in range(12) if i not in (3, 9)]
    assert manifest["dropped_rows"] == 2 and manifest["rows"] == 10 and manifest["non_finite"] == "drop"
    assert manifest["dropped_sample"] == ["m.parquet row 3 column 'f0': value is NaN or missing",
                                          "m.parquet row 9 column 'f4': value is +inf"]
    assert ids == [names(12)[i] for i in kept]
    np.testing.assert_allclose(values, expected_normalized(x[kept]), rtol=1e-6, atol=1e-7)
    assert [(c["start"], c["stop"]) for c in manifest["chunks"]] == [(0, 4), (4, 8), (8, 10)]


def test_drop_mode_keeps_original_row_numbers_as_ids(root):
    x = sample(rows=5)
    x[1, 0] = np.nan
    np.save(matrix_dir(root) / "x.npy", x)
    run("--non-finite", "drop")
    assert read_output(root)[1] == [0, 2, 3, 4]


def test_every_row_dropped_is_an_error(root):
    np.save(matrix_dir(root) / "x.npy", np.full((3, 2), np.nan))
    assert fails("--non-finite", "drop") == (
        "x.npy: all 3 rows hold NaN or infinite values and were dropped; nothing is left to compare: fix the input")


# ---------------------------------------------------------------------------------------------- bad inputs


def bad_input_cases():
    def npy(name, array):
        return lambda d: np.save(d / name, array)

    def text(name, content):
        return lambda d: (d / name).write_text(content)

    def truncated(d):
        np.save(d / "t.npy", np.ones((10, 4)))
        (d / "t.npy").write_bytes((d / "t.npy").read_bytes()[:200])

    def two(first, second):
        return lambda d: (first(d), second(d))

    def parquet(name, table):
        return lambda d: pq.write_table(table, d / name)

    return [
        ("empty prefix", lambda d: None, (),
         "input {dir} holds no data files; point InputData at a .npy, .parquet or .csv file or a prefix of them"),
        ("zero-byte file", text("m.csv", ""), (),
         "m.csv: file is empty (0 bytes); remove it or re-export the data"),
        ("header only", text("m.csv", "id,a,b\n"), (),
         "m.csv: no data rows; point InputData at a matrix with at least one row"),
        # A stray word among numbers makes the column look like text: the cell is named, not an id ambiguity.
        ("stray word in a feature column", text("m.csv", "sku,a,b\n" + "".join(
            f"s{i},{i},{'oops' if i == 22 else i * 2}\n" for i in range(40))), (),
         "m.csv row 22 (line 24) column 'b': 'oops' is not a number; "
         "fix the value, or make this column the id column with input.id_column"),
        ("semicolon-separated", text("m.csv", "id;a;b\nx;1;2\n"), (),
         "m.csv: no feature columns (only the id column 'id;a;b'); the input needs at least one numeric column; "
         "the header looks ';'-separated, but this file is read as ','-separated: set input.delimiter: \";\" in "
         "pipeline.yaml"),
        ("numeric id column", parquet("m.parquet", pa.table({"user_id": [7, 9], "a": [1.0, 2.0]})), (),
         "m.parquet: column 'user_id' is numeric and named like an id, so it would be used as a "
         "feature; set input.id_column: user_id in pipeline.yaml (or drop or rename the column if it really is a "
         "feature)"),
        ("saved pandas index", text("m.csv", ",a,b\n0,1,2\n1,3,4\n"), (),
         "m.csv: column '' looks like a saved pandas index, so it would be used as a feature; write the file "
         "without it (to_csv(index=False)), or name it in input.id_column"),
        ("npy without rows", npy("x.npy", np.zeros((0, 3))), (),
         "x.npy: no data rows; point InputData at a matrix with at least one row"),
        ("npy zero columns", npy("x.npy", np.zeros((3, 0))), (),
         "x.npy: matrix has shape (3, 0): zero feature columns; save a matrix with at least one column"),
        ("npy 1-D", npy("x.npy", np.zeros(3)), (),
         "x.npy: array has shape (3,), but a 2-D (rows, features) matrix is required; "
         "reshape it before saving (e.g. x.reshape(len(x), -1))"),
        ("npy strings", npy("x.npy", np.array([["a", "b"]])), (),
         "x.npy: dtype <U1 is not numeric; save the matrix as float32, float64 or an integer type"),
        ("truncated npy", truncated, (),
         "t.npy: truncated .npy file: header says shape (10, 4) float64 (448 bytes) but the file has 200 bytes; "
         "copy it again or re-save it with numpy.save(path, matrix)"),
        ("not an npy", text("x.npy", "hello, I am text"), (),
         "x.npy: not a valid .npy file (the magic string is not correct; expected b'\\x93NUMPY', got b'hello,'); "
         "re-save it with numpy.save(path, matrix)"),
        ("id column with npy", npy("x.npy", np.ones((2, 2))), ("--id-column", "item_id"),
         "id column 'item_id' was named (input.id_column), but the input is .npy, which has no named columns; "
         "remove input.id_column (ids are then row numbers) or provide parquet/csv with that column"),
        ("unsupported extension", text("m.json", "{}"), (),
         "m.json: unsupported file type '.json'; the input may hold only .npy, .npz (scipy.sparse), .parquet, .csv or "
         ".tsv files (CSV and TSV may be compressed: .gz, .bz2, .zst) (remove or move this one)"),
        ("mixed formats", two(npy("a.npy", np.ones((2, 2))), text("b.csv", "a,b\n1,2\n")), (),
         "mixed input formats: a.npy is npy but b.csv is csv; put files of one format under the input prefix"),
        ("different dims", two(npy("a.npy", np.ones((2, 2))), npy("b.npy", np.ones((2, 3)))), (),
         "b.npy has 3 columns but a.npy has 2; every file of the input must have the same number of columns"),
        ("different columns", two(text("a.csv", "id,f0,f1\nx,1,2\n"), text("b.csv", "id,f0,f2,f3\ny,1,2,3\n")), (),
         "b.csv has different columns from a.csv (missing f1; extra f2, f3); "
         "every file of the input must have the same columns"),
        ("ragged csv", text("m.csv", "id,a,b\nx,1,2\ny,3\nz,4,5\n"), (),
         "m.csv line 3: 2 fields, but the header has 3; "
         "fix that line (a missing or extra comma, or a value with a comma that needs quotes)"),
        ("too many fields", text("m.csv", "id,a,b\nx,1,2\ny,3,4,5\n"), (),
         "m.csv line 3: 4 fields, but the header has 3; "
         "fix that line (a missing or extra comma, or a value with a comma that needs quotes)"),
        ("non-numeric feature value", text("m.csv", "id,a,b\nx,1,2\ny,3,4\nz,five,6\n"), ("--id-column", "id"),
         "m.csv row 2 (line 4) column 'a': 'five' is not a number; "
         "fix the value, or make this column the id column with input.id_column"),
        ("two non-numeric columns", text("m.csv", "id,name,a\nx,foo,1\n"), (),
         "more than one non-numeric column: 'id' (m.csv), 'name' (m.csv); set input.id_column in pipeline.yaml to "
         "say which one holds the ids (the others must be numeric features)"),
        ("missing id column", text("m.csv", "id,a,b\nx,1,2\n"), ("--id-column", "item"),
         "m.csv: id column 'item' (input.id_column) not found; columns present: id, a, b; fix input.id_column in pipeline.yaml"),
        ("only an id column", text("m.csv", "id\nx\n"), (),
         "m.csv: no feature columns (only the id column 'id'); the input needs at least one numeric column"),
        ("no header", text("m.csv", "0.5,1.5,2\n1,2,3\n"), (),
         "m.csv line 1: the first line (0.5,1.5,2) looks like data, but a header row is required; "
         "add a line of column names (e.g. f0,f1,...) at the top"),
        ("duplicate column names", text("m.csv", "id,a,a\nx,1,2\n"), (),
         "m.csv: column name 'a' appears more than once; give every column a unique name"),
        ("duplicate ids", two(text("a.csv", "id,a\nx,1\ny,2\n"), text("b.csv", "id,a\nz,1\ny,3\n")), (),
         "duplicate id 'y': a.csv row 1 (line 3) and b.csv row 1 (line 3); "
         "ids must be unique: fix the id column (or name another with input.id_column)"),
        ("missing id", text("m.csv", "id,a\nx,1\n,2\n"), (),
         "m.csv row 1 (line 3) column 'id': the id is missing; give every row an id"),
        ("string feature in parquet",
         parquet("m.parquet", pa.table({"id": ["x"], "a": ["1.0"], "b": [2.0]})), ("--id-column", "id"),
         "m.parquet: column 'a' is string, not numeric; store features as numbers (int or float), "
         "or make it the id column with input.id_column"),
        ("id types differ across parquet files",
         two(parquet("a.parquet", pa.table({"id": [1], "f": [1.0]})),
             parquet("b.parquet", pa.table({"id": ["2"], "f": [1.0]}))), ("--id-column", "id"),
         "id column 'id' is int64 in a.parquet but string in b.parquet; give the id column one type in every file"),
        ("list column of strings as the only non-numeric", parquet("m.parquet", pa.table({"v": [["a"]], "a": [1.0]})),
         (), "m.parquet: column 'v' is list<element: string>, so it cannot be the id column (ids are strings or "
         "integers); if it holds the vectors, store them as a list of numbers (float or int)"),
        ("not a parquet file", text("m.parquet", "nope"), (),
         None),  # pyarrow's own wording varies by version: checked by prefix below
        ("bad chunk rows", npy("x.npy", np.ones((2, 2))), ("--chunk-rows", "0"),
         "bad arguments: --chunk-rows must be at least 1, got 0; usage: python -m steps.preprocess "
         "[-h] --input-uri INPUT_URI [--id-column ID_COLUMN] [--non-finite {error,drop}] "
         "[--chunk-rows CHUNK_ROWS] [--memory-budget-mb MEMORY_BUDGET_MB] [--vector-column VECTOR_COLUMN] "
         "[--delimiter DELIMITER] [--query-uri QUERY_URI] "
         "[--query-id-column QUERY_ID_COLUMN] [--query-files QUERY_FILES] [--self-rule {exclude-same-id,keep}]"),
    ]


@pytest.mark.parametrize("case", bad_input_cases(), ids=lambda case: case[0])
def test_bad_input_message(root, case):
    _, make, args, expected = case
    make(matrix_dir(root))
    message = fails(*args)
    if expected is None:
        assert message.startswith("m.parquet: not a readable Parquet file (")
        assert message.endswith("); re-export it or remove it from the input")
    else:
        assert message == expected.replace("{dir}", str(matrix_dir(root)))
    assert not out_dir(root).exists() or sorted(p.name for p in out_dir(root).iterdir()) == []


def test_missing_input_channel(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLPAIRS_OPT_ML", str(tmp_path))
    assert fails() == (f"input channel {tmp_path}/processing/input/matrix does not exist or is not a directory; "
                       "map the InputData location to the processing input 'matrix'")


# ---------------------------------------------------------------------------------------------- all-or-nothing


def test_failure_after_chunks_were_written_leaves_nothing_behind(root):
    x = sample(rows=50)
    x[45, 2] = np.nan  # found only after several chunks are on disk
    np.save(matrix_dir(root) / "a.npy", x[:30])
    np.save(matrix_dir(root) / "b.npy", x[30:])
    assert fails("--chunk-rows", "4").startswith("b.npy row 15 column 2: value is NaN or missing")
    assert list(out_dir(root).iterdir()) == []


def test_failed_rerun_keeps_the_previous_complete_output(root):
    np.save(matrix_dir(root) / "x.npy", sample(rows=10))
    good = run("--chunk-rows", "3")
    np.save(matrix_dir(root) / "x.npy", np.full((10, 5), np.nan))
    fails("--chunk-rows", "3")
    assert json.loads((out_dir(root) / "manifest.json").read_text()) == good
    assert sorted(p.name for p in (out_dir(root) / "chunks").iterdir()) == [f"chunk-{i:06d}.npy" for i in range(4)]


def test_rerun_replaces_stale_chunks(root):
    np.save(matrix_dir(root) / "x.npy", sample(rows=10))
    run("--chunk-rows", "2")
    manifest = run("--chunk-rows", "5")
    assert sorted(p.name for p in (out_dir(root) / "chunks").iterdir()) == ["chunk-000000.npy", "chunk-000001.npy"]
    assert len(manifest["chunks"]) == 2


def test_run_step_writes_the_failure_file(root, capsys):
    x = sample(rows=4)
    x[2, 1] = np.inf
    np.save(matrix_dir(root) / "x.npy", x)
    assert pre.run(["--input-uri", URI]) == 1
    reason = ("preprocess: x.npy row 2 column 1: value is +inf; "
              "fix the input, or set input.non_finite: drop in pipeline.yaml to drop such rows")
    assert (root / "output/message").read_text() == reason + "\n"  # a processing job's ExitMessage
    assert not (root / "output/failure").exists()
    assert reason in capsys.readouterr().err


def test_run_step_reports_bad_arguments_in_the_failure_file(root):
    assert pre.run(["--input-uri", URI, "--non-finite", "skip"]) == 1
    assert (root / "output/message").read_text().startswith(
        "preprocess: bad arguments: argument --non-finite: invalid choice: 'skip' (choose from ")
