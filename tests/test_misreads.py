"""Silent misreads (issue 11): a numeric column that is an id, a code or pandas' index is never used as a feature
without a word, whatever the reader and however the table was written; every entry of the input prefix is read
once or refused, links included."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from steps import preprocess as pre
from steps.readers.columns import looks_like_id

from tests.test_preprocess import URI, fails


def manifest(inp) -> dict:
    pre.main(["--input-uri", URI])
    return json.loads((inp.parent.parent / "output/normalized/manifest.json").read_text())


def frame(column: str) -> pd.DataFrame:
    return pd.DataFrame({"name": ["a", "b", "c"], column: [101, 102, 103], "f0": [0.5, 1.5, 2.5], "f1": [1.0, 0, 2]})


@pytest.mark.parametrize("name", ["userId", "itemID", "sku", "SKU_code", "row_idx", "uuid", "customer id", "ID-2"])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_numeric_column_named_like_an_id_is_refused_in_every_reader(inp, name, fmt):
    """The string id column `name` is found (the only text column): the numeric id-like column beside it would
    have become a feature."""
    df = frame(name)
    df.to_parquet(inp / "m.parquet", index=False) if fmt == "parquet" else df.to_csv(inp / "m.csv", index=False)
    expected = (f"m.{fmt}: column {name!r} is numeric and named like an id, so it would be used as a feature; set "
                f"input.id_column: {name} in pipeline.yaml (or drop or rename the column if it really is a feature)")
    assert fails() == expected
    assert fails("--id-column", "name") == expected  # naming the ids elsewhere does not make it a feature


def test_the_id_like_column_named_in_id_column_is_the_ids(inp):
    frame("userId").drop(columns="name").to_parquet(inp / "m.parquet", index=False)
    pre.main(["--input-uri", URI, "--id-column", "userId"])
    found = json.loads((inp.parent.parent / "output/normalized/manifest.json").read_text())
    assert (found["ids"]["source"], found["ids"]["type"], found["input"]["columns"]) == ("column userId", "int64",
                                                                                          ["f0", "f1"])


@pytest.mark.parametrize("name", ["idf", "kid", "width", "f0", "identity", "keyboard_time", "paid"])
def test_names_that_only_contain_id_letters_are_features(name):
    assert not looks_like_id(name)


def test_a_zero_padded_code_column_is_refused_with_its_row_and_line(inp):
    rows = ["name,f0,code"] + [f"u{i},{i * 0.5},{i:05d}" if i >= 3 else f"u{i},{i * 0.5},{i + 10000}" for i in range(6)]
    (inp / "m.csv").write_text("\n".join(rows) + "\n")
    assert fails() == ("m.csv row 3 (line 5) column 'code': '00003' is a zero-padded number, so the column holds "
                       "codes, not quantities, and would be misread as a feature; set input.id_column: code in "
                       "pipeline.yaml (or write the numbers without leading zeros if it really is a feature)")


def test_zero_padding_is_caught_beyond_the_sampled_block(inp):
    """The first block decides the column types; the padded value comes much later, in another block."""
    lines = ["name,f0,code"] + [f"u{i},0.{i % 97},{i + 1}" for i in range(300_000)] + ["late,0.5,0042"]
    (inp / "m.csv").write_text("\n".join(lines) + "\n")
    assert fails().startswith("m.csv row 300000 (line 300002) column 'code': '0042' is a zero-padded number")


def test_a_zero_padded_code_with_spaces_around_it_is_refused_too(inp):
    (inp / "m.csv").write_text("name,f0,code\na,0.5,12\nb,1.5, 0042\n")
    assert fails().startswith("m.csv row 1 (line 3) column 'code': '0042' is a zero-padded number")


def test_numbers_with_one_leading_zero_are_numbers(inp):
    (inp / "m.csv").write_text("name,f0,f1\na,0.5,0\nb,-0.25,0e3\nc,0.75,1\n")
    assert manifest(inp)["rows"] == 3


@pytest.mark.parametrize("write, column", [
    (lambda df, p: df[df.f0 > 0].to_parquet(p), "__index_level_0__"),            # a filtered frame keeps its index
    (lambda df, p: df.set_index("user").to_parquet(p), "user"),                   # a named integer index
    (lambda df, p: df.reset_index().to_parquet(p, index=False), "index"),          # reset_index() writes it out
])
def test_a_saved_pandas_index_is_refused_in_parquet(inp, write, column):
    df = pd.DataFrame({"user": [7, 3, 9, 12], "f0": [0.5, 1.0, -1.0, 2.0], "f1": [1.0, 2.0, 3.0, 4.0]})
    write(df, inp / "m.parquet")
    assert fails() == (f"m.parquet: column {column!r} looks like a saved pandas index, so it would be used as a "
                       "feature; write the file without it (to_parquet(index=False)), or name it in input.id_column")


def test_a_range_index_is_metadata_only_and_a_named_index_may_be_the_ids(inp):
    df = pd.DataFrame({"user": [7, 3, 9], "f0": [0.5, 1.0, -1.0], "f1": [1.0, 2.0, 3.0]})
    df[["f0", "f1"]].to_parquet(inp / "a.parquet")  # RangeIndex: stored in the metadata, not as a column
    assert manifest(inp)["ids"]["source"] == "row number"
    (inp / "a.parquet").unlink()
    df.set_index("user").to_parquet(inp / "b.parquet")
    pre.main(["--input-uri", URI, "--id-column", "user"])
    ids = pd.read_parquet(inp.parent.parent / "output/normalized/ids.parquet")["id"].tolist()
    assert ids == [7, 3, 9]


def test_an_id_column_that_pandas_kept_only_as_a_range_in_the_metadata_is_explained(inp):
    pd.DataFrame({"f0": [0.5, 1.0, -1.0]}, index=pd.RangeIndex(7, 10, name="user")).to_parquet(inp / "m.parquet")
    assert fails("--id-column", "user") == (
        "m.parquet: id column 'user' (input.id_column) not found; columns present: f0; pandas kept 'user' as a "
        "range index in the file's metadata, not as a column: write it as a column "
        "(df.reset_index().to_parquet(index=False)); fix input.id_column in pipeline.yaml")


# ---- every entry of the prefix is read once, or refused -----------------------------------------------------------


def test_a_linked_subfolder_is_read_like_a_folder(inp, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.save(inp / "a.npy", np.ones((2, 3)))
    np.save(elsewhere / "b.npy", np.full((4, 3), 2.0))
    (inp / "more").symlink_to(elsewhere, target_is_directory=True)
    found = manifest(inp)
    assert [f["key"] for f in found["input"]["files"]] == ["a.npy", "more/b.npy"] and found["rows"] == 6


def test_a_dangling_link_is_an_error_not_skipped(inp):
    np.save(inp / "a.npy", np.ones((2, 3)))
    (inp / "b.npy").symlink_to("gone.npy")
    assert fails() == "b.npy: a symbolic link to 'gone.npy', which does not exist; restore its target or remove the link"


def test_a_link_to_what_is_already_read_would_read_rows_twice(inp):
    (inp / "part").mkdir()
    np.save(inp / "part/a.npy", np.ones((2, 3)))
    (inp / "again").symlink_to(inp / "part", target_is_directory=True)
    assert fails() == ("part: the same folder as again (through a symbolic link), so its rows would be read twice; "
                       "remove the link")
    (inp / "again").unlink()
    (inp / "loop").symlink_to(inp, target_is_directory=True)
    assert fails() == ("loop: the same folder as the input itself (through a symbolic link), so its rows would be "
                       "read twice; remove the link")


def test_a_fifo_in_the_prefix_is_refused_not_read(inp):
    np.save(inp / "a.npy", np.ones((2, 3)))
    os.mkfifo(inp / "b.npy")
    assert fails() == ("b.npy: not a regular file (a FIFO, socket or device); the input may hold only .npy, .parquet "
                       "or .csv files: remove it")
