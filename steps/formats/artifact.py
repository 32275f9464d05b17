"""The artifact (format allpairs.artifact, version 2): written by Merge, checked by Register, read by users.

The index space. An artifact has `rows` rows, numbered 0 .. rows-1: the rows Preprocess kept, in input order.
That number, the *artifact row*, is what neighbors.npy holds, what indexes the rows of both .npy files, and the
`row` column of rows.parquet. It is not the row's position in the input: with `input.non_finite: drop`,
every row after a dropped one sits lower; rows.parquet maps each artifact row to its id and its `input_row`
(0-based position in the whole input, every file in key order, counted before dropping), so dropped rows show
as gaps in `input_row`, never as shifted neighbours. The artifact alone answers "the neighbours of id X".

    neighbors.parquet   the edge list `id, neighbor_id, rank, score` (rank 1 = most similar; padding is not
                        written), in artifact row order then rank. Row group g holds the edges of the rows
                        [g*R, (g+1)*R), R = manifest layout.neighbors.parquet.rows_per_row_group (a group may
                        be empty), so a lookup reads one group, not the file
    neighbors.npy       int32 (int64 past 2**31 rows), shape (rows, k): neighbours' artifact rows, -1 where padded
    scores.npy          float32, shape (rows, k): their scores, NaN where padded
    rows.parquet        `row, id, input_row`, one line per artifact row, in row order
    id_index.parquet    `id, row`, sorted by id, in row groups of ROWS_PER_ROW_GROUP: min/max statistics find
                        the one group that can hold an id
    report.html         the artifact at a glance, for a browser (steps/formats/report.py); it describes the run
                        too (hosts, times), so it is not among the byte-identical files
    manifest.json       format, counts, input and fingerprints, parameters, hosts, timings, the parquet layout,
                        and every file's size and sha256: a manifest in place vouches for the files beside it
    registration.json   the registry entry (added by Register once it has registered the files)

Byte for byte: every data file depends only on the result (the input, TopK, MinScore) and this writer, never on
how Merge's batches arrive (host count, block budget, resumes): row groups have fixed sizes, the writer settings
are pinned (PARQUET_WRITER) rather than library defaults. manifest.json too, except the facts of the run that
made it (RUN_KEYS, and report.html's entry in `files`: the report shows the hosts and times; `result_view`).
Same software, same bytes: parquet records its writer's version (`created_by`).

The files stream in row order: memory holds the ids (N), one batch of BATCH_EDGES edges and one row group,
never N x k. The reader (`Artifact`, opened by `allpairs.open`) reads through any pyarrow filesystem.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import npy
from ..contract import (ARTIFACT_DATA_FILES, ARTIFACT_FORMAT, CORPUS_PARQUET, ID_INDEX_PARQUET, MANIFEST, NEIGHBORS_NPY,
                        NEIGHBORS_PARQUET, QUERIES_MODE, REPORT_HTML, ROWS_PARQUET, SCORES_NPY)
from ..errors import StepError
from ..io import atomic_path, sha256_file, write_json

FORMAT, VERSION = ARTIFACT_FORMAT
BATCH_EDGES = 1 << 20  # edges handled at once (about 60 MB of arrays): memory follows this, not N or N*k
DATA_FILES = (*ARTIFACT_DATA_FILES, REPORT_HTML)  # every file the manifest vouches for
# Row groups are what a lookup reads: 16384 edges (about 200 KB) and 16384 ids keep one lookup in a 1M-row,
# k=10 artifact at a few ms; 4x larger groups cost 2-3x per lookup, 2x smaller ones a larger footer to open
# (benchmarks/bench_lookup.py). Query engines scan them fine, if not at their best (they prefer 128 MB groups).
EDGES_PER_ROW_GROUP = 1 << 14  # neighbors.parquet: a row group holds the edges of EDGES_PER_ROW_GROUP // k rows
ROWS_PER_ROW_GROUP = 1 << 14  # rows.parquet and id_index.parquet
# Pinned, so the bytes never follow a library default: zstd (read by pandas, Spark, Athena, DuckDB), format 2.6,
# min/max statistics on every column (what lookups and query engines prune with).
PARQUET_WRITER: dict[str, Any] = {
    "version": "2.6", "compression": "zstd", "compression_level": 3, "write_statistics": True,
    "data_page_size": 1 << 20, "data_page_version": "1.0", "write_batch_size": 1024,
    "dictionary_pagesize_limit": 1 << 20, "store_schema": True, "write_page_index": False,
}
# The edge list repeats ids (each row's id k times, neighbours across rows): dictionaries pay. Row files hold
# each id once: a dictionary would be abandoned at its size limit anyway.
EDGE_DICTIONARY, ROW_DICTIONARY = True, False
# manifest.json keys that describe the run, not the result: they differ between two runs of the same result.
RUN_KEYS = ("execution_id", "artifact_uri", "parameters", "training_job", "hosts", "timings")


def result_view(manifest: dict) -> dict:
    """The manifest without the facts of the run: what two runs of the same result share, byte for byte."""
    view = {key: value for key, value in manifest.items() if key not in RUN_KEYS}
    view["files"] = {name: entry for name, entry in view.get("files", {}).items() if name != REPORT_HTML}
    return view


def batch_rows(k: int) -> int:
    """Rows per batch the writer wants, so a batch holds about BATCH_EDGES edges."""
    return max(1, BATCH_EDGES // max(k, 1))


def edge_group_rows(k: int) -> int:
    """Artifact rows per row group of neighbors.parquet."""
    return max(1, EDGES_PER_ROW_GROUP // max(k, 1))


# ---- writing ---------------------------------------------------------------------------------------------------


def write_files(batches: Iterable[tuple[int, np.ndarray, np.ndarray]], ids: pa.Array, rows: int, k: int,
                out: Path, input_rows: pa.Array, corpus: tuple[pa.Array, pa.Array] | None = None) -> dict:
    """Stream (first_row, neighbors, scores) batches, in row order and covering [0, rows), into the data files;
    `ids` and `input_rows` give each row's id and input position. `corpus` (queries mode): the ids and input
    positions of the rows the neighbour indices name, written as corpus.parquet. Returns the counts."""
    neighbor_ids = ids if corpus is None else corpus[0]
    index_dtype = np.int32 if len(neighbor_ids) < 2**31 else np.int64
    schema = pa.schema([("id", ids.type), ("neighbor_id", neighbor_ids.type), ("rank", pa.int32()),
                        ("score", pa.float32())])
    pairs = short_rows = 0
    with npy.row_writer(out / NEIGHBORS_NPY, index_dtype, (rows, k)) as all_n, \
            npy.row_writer(out / SCORES_NPY, np.float32, (rows, k)) as all_s, \
            atomic_path(out / NEIGHBORS_PARQUET) as tmp_p, \
            pq.ParquetWriter(tmp_p, schema, use_dictionary=EDGE_DICTIONARY, **PARQUET_WRITER) as writer:
        groups = _EdgeGroups(writer, schema, ids, edge_group_rows(k), neighbor_ids)
        for first, nb, sc in batches:
            all_n.write(nb)
            all_s.write(sc)
            found = nb >= 0
            pairs += int(found.sum())
            short_rows += int((~found[:, -1]).sum())
            groups.add(first, nb, sc)
        groups.close()
    _write_rows(out / ROWS_PARQUET, ids, input_rows)
    _write_id_index(out / ID_INDEX_PARQUET, ids)
    if corpus is not None:
        _write_rows(out / CORPUS_PARQUET, *corpus)
    return {"pairs": pairs, "rows_with_fewer_than_k": short_rows}


class _EdgeGroups:
    """Cuts the edge list into row groups of exactly `rows_per_group` artifact rows (the last one shorter),
    whatever sizes the batches come in: the file's layout depends on the result only."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema, ids: pa.Array, rows_per_group: int,
                 neighbor_ids: pa.Array | None = None):
        self.writer, self.schema, self.ids, self.rows_per_group = writer, schema, ids, rows_per_group
        self.neighbor_ids = ids if neighbor_ids is None else neighbor_ids
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, first: int, nb: np.ndarray, sc: np.ndarray) -> None:
        taken = 0
        while taken < len(nb):
            n = min(len(nb) - taken, self.rows_per_group - self.pending_rows)
            self.pending.append(self._edges(first + taken, nb[taken:taken + n], sc[taken:taken + n]))
            self.pending_rows += n
            taken += n
            if self.pending_rows == self.rows_per_group:
                self._flush()

    def close(self) -> None:
        if self.pending_rows:
            self._flush()

    def _edges(self, first: int, nb: np.ndarray, sc: np.ndarray) -> pa.Table:
        r, c = np.nonzero(nb >= 0)
        return pa.table({
            "id": self.ids.take(pa.array(first + r)),
            "neighbor_id": self.neighbor_ids.take(pa.array(nb[r, c])),
            "rank": pa.array((c + 1).astype(np.int32)),
            "score": pa.array(sc[r, c]),
        }, schema=self.schema)

    def _flush(self) -> None:
        group = pa.concat_tables(self.pending).combine_chunks()  # one chunk: pages never follow the batches
        self.writer.write_table(group, row_group_size=max(1, group.num_rows))  # one row group, even when empty
        self.pending, self.pending_rows = [], 0


def _write_groups(dest: Path, schema: pa.Schema, columns, rows: int, sorted_by: str) -> None:
    """A parquet file of `rows` lines in row groups of ROWS_PER_ROW_GROUP; columns(lo, hi) gives a group's arrays."""
    sorting = [pq.SortingColumn(schema.get_field_index(sorted_by))]
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema, use_dictionary=ROW_DICTIONARY,
                                                    sorting_columns=sorting, **PARQUET_WRITER) as writer:
        for lo in range(0, rows, ROWS_PER_ROW_GROUP):
            hi = min(rows, lo + ROWS_PER_ROW_GROUP)
            writer.write_table(pa.table(columns(lo, hi), schema=schema), row_group_size=hi - lo)


def _write_rows(dest: Path, ids: pa.Array, input_rows: pa.Array) -> None:
    schema = pa.schema([("row", pa.int64()), ("id", ids.type), ("input_row", pa.int64())])
    _write_groups(dest, schema, lambda lo, hi: [pa.array(np.arange(lo, hi, dtype=np.int64)), ids.slice(lo, hi - lo),
                                                 input_rows.slice(lo, hi - lo)], len(ids), "row")


def _write_id_index(dest: Path, ids: pa.Array) -> None:
    order = pc.sort_indices(ids).to_numpy()  # ids are unique: the order is total
    schema = pa.schema([("id", ids.type), ("row", pa.int64())])
    _write_groups(dest, schema, lambda lo, hi: [ids.take(pa.array(order[lo:hi])), pa.array(order[lo:hi])],
                  len(ids), "id")


def clamp_note(top_k: int, k: int, rows: int, zero_rows: int) -> str:
    """Why the artifact has fewer neighbour columns than TopK (the hosts computed only these)."""
    return (f"TopK={top_k} is more than any row can have: of {rows} rows, {zero_rows} all-zero, a row has at most "
            f"{k} neighbour{'s' if k != 1 else ''}; k is {k}, not {top_k} (columns of padding only are not written)")


def layout(k: int, queries: bool = False) -> dict:
    """How the parquet files are cut, as the manifest states it (readers rely on it, not on defaults)."""
    corpus = {CORPUS_PARQUET: {"rows_per_row_group": ROWS_PER_ROW_GROUP, "order": "row"}} if queries else {}
    return {
        NEIGHBORS_PARQUET: {"rows_per_row_group": edge_group_rows(k), "order": "row, rank"},
        ROWS_PARQUET: {"rows_per_row_group": ROWS_PER_ROW_GROUP, "order": "row"},
        ID_INDEX_PARQUET: {"rows_per_row_group": ROWS_PER_ROW_GROUP, "order": "id"},
        **corpus,
        "parquet": PARQUET_WRITER,
    }


def data_files(queries: bool = False) -> tuple[str, ...]:
    """Every file the manifest vouches for; queries mode adds corpus.parquet (the rows neighbours are drawn from)."""
    return (*DATA_FILES, CORPUS_PARQUET) if queries else DATA_FILES


def files_entry(out: Path, queries: bool = False) -> dict:
    """Each data file's sha256 and size, as the manifest lists them."""
    return {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
            for name in data_files(queries)}


def write_manifest(out: Path, manifest: dict) -> None:
    queries = manifest.get("mode") == QUERIES_MODE
    write_json(out / MANIFEST, {"format": FORMAT, "version": VERSION, **manifest,
                                "layout": layout(manifest["k"], queries), "files": files_entry(out, queries)})


def check(folder: Path, execution_id: str, artifact_uri: str) -> dict:
    """The artifact's manifest, once every file it lists is present, complete and unaltered."""
    path = folder / MANIFEST
    fix = "rerun the Merge step (its output upload may have failed or been altered)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise StepError(f"{artifact_uri}/{MANIFEST}: missing; the artifact is incomplete: {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{artifact_uri}/{MANIFEST}: not an artifact manifest ({exc}); {fix}") from None
    if (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise StepError(f"{artifact_uri}/{MANIFEST}: format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}; {fix}")
    if manifest.get("execution_id") != execution_id or manifest.get("artifact_uri") != artifact_uri:
        raise StepError(f"{artifact_uri}/{MANIFEST}: written for execution {manifest.get('execution_id')!r} at "
                        f"{manifest.get('artifact_uri')!r}, not this one ({execution_id!r} at {artifact_uri!r}): "
                        "another execution's artifact is never registered; rerun the Merge step")
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise StepError(f"{artifact_uri}/{name}: listed in {MANIFEST} but not there; {fix}")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise StepError(f"{artifact_uri}/{name}: {size} bytes, {MANIFEST} says {entry['bytes']}; {fix}")
        if sha256_file(file) != entry["sha256"]:
            raise StepError(f"{artifact_uri}/{name}: SHA-256 differs from {MANIFEST}; {fix}")
    return manifest


# ---- reading ---------------------------------------------------------------------------------------------------


class ArtifactError(Exception):
    """An artifact cannot be read, or cannot answer what was asked (the message says where, what and the fix)."""


class NotFound(ArtifactError, LookupError):
    """What was asked for is not there: no artifact at a location, an id the artifact does not hold."""


class InvalidRequest(ArtifactError, ValueError):
    """A question the artifact cannot answer as asked: an id of the wrong type, k beyond what it holds."""


@dataclass(frozen=True)
class Counts:
    zero_rows: int  # all-zero rows: no neighbours, in no one's list
    dropped_rows: int  # input rows Preprocess dropped (input.non_finite: drop); not artifact rows
    pairs: int  # edges in neighbors.parquet
    rows_with_fewer_than_k: int


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. `raw` keeps the JSON as written, every key (also ones added after this reader)."""

    rows: int
    dim: int
    k: int  # neighbour columns: TopK, or less when no row could have TopK neighbours (then `notes` says so)
    top_k: int  # TopK as asked
    threshold: float | None  # MinScore, inclusive; None: every pair kept
    id_type: str  # "string" | "int64"
    id_source: str  # "column NAME" | "row number"
    counts: Counts
    input_uri: str | None
    input_fingerprint: str | None
    notes: tuple[str, ...]
    files: dict[str, FileEntry] = field(repr=False)
    layout: dict = field(repr=False)
    # The run that made it (RUN_KEYS): the only facts that differ between two runs of the same result.
    execution_id: str | None
    artifact_uri: str | None
    parameters: dict[str, str] = field(repr=False)
    hosts: tuple[dict, ...] = field(repr=False)
    timings: dict = field(repr=False)
    raw: dict = field(repr=False, compare=False)
    format: str = FORMAT
    version: int = VERSION

    @classmethod
    def parse(cls, raw: Any, where: str) -> Manifest:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ArtifactError(f"{where}: not an {FORMAT} manifest; point at an artifact folder (the `artifact/` "
                                "of an execution's output)")
        if raw.get("version") != VERSION:
            raise ArtifactError(f"{where}: {FORMAT} version {raw.get('version')!r}; this reader reads version "
                                f"{VERSION} (version 1 has no rows.parquet or id index): rerun the pipeline, or "
                                "read its neighbors.parquet with pandas")
        try:
            counts, files, ids = raw["counts"], raw["files"], raw["ids"]
            threshold = raw.get("threshold")
            return cls(
                rows=int(raw["rows"]), dim=int(raw["dim"]), k=int(raw["k"]), top_k=int(raw.get("top_k", raw["k"])),
                threshold=None if threshold is None else float(threshold),
                id_type=str(ids["type"]), id_source=str(ids["source"]),
                counts=Counts(int(counts["zero_rows"]), int(counts["dropped_rows"]), int(counts["pairs"]),
                              int(counts["rows_with_fewer_than_k"])),
                input_uri=raw.get("input", {}).get("uri"), input_fingerprint=raw.get("input", {}).get("fingerprint"),
                notes=tuple(raw.get("notes") or ()),
                files={name: FileEntry(str(e["sha256"]), int(e["bytes"])) for name, e in files.items()},
                layout=dict(raw["layout"]),
                execution_id=raw.get("execution_id"), artifact_uri=raw.get("artifact_uri"),
                parameters=dict(raw.get("parameters") or {}), hosts=tuple(raw.get("hosts") or ()),
                timings=dict(raw.get("timings") or {}), raw=raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{where}: incomplete {FORMAT} manifest ({type(exc).__name__}: {exc}); the artifact "
                                "was altered or not written by Merge: rerun the pipeline") from None


class Artifact:
    """An artifact opened for reading, through a pyarrow filesystem (the local disk, or S3 through boto3).
    Open one with `allpairs.open(location)`; a lookup reads one row group of the id index and one of the edge
    list, never the whole artifact."""

    def __init__(self, filesystem, root: str, location: str):
        self.filesystem, self.root, self.location = filesystem, root.rstrip("/"), location
        where = self._where(MANIFEST)
        try:
            with filesystem.open_input_stream(self.path(MANIFEST)) as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            raise NotFound(f"{where}: no artifact there (no {MANIFEST}); pass an artifact folder, the "
                           "`artifact:` line a run prints") from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{where}: cannot read it ({exc})") from None
        self.manifest = Manifest.parse(raw, where)
        self._parquet: dict[str, pq.ParquetFile] = {}
        self._id_bounds: tuple[list, list] | None = None

    def __repr__(self) -> str:
        m = self.manifest
        return f"<allpairs artifact {self.location}: {m.rows} rows, k={m.k}, {m.counts.pairs} pairs>"

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for file in self._parquet.values():
            file.close()
        self._parquet.clear()

    def path(self, name: str) -> str:
        """Where a file of the artifact is, in `filesystem`'s terms."""
        return f"{self.root}/{name}"

    # ---- the public reads

    def neighbors(self, ids, k: int | None = None):
        """The neighbours of one id or many, as a pandas DataFrame `id, neighbor_id, rank, score`: the ids in the
        order given (each once), then by rank; at most `k` per id (default: all the artifact holds). A row with
        no neighbours (all-zero, or none above MinScore) has no lines. An id not in the artifact is a NotFound."""
        wanted = self._typed_ids(ids)
        k = self._checked_k(k)
        rows = self.rows_of(wanted)
        frame = self._edges_of(wanted, rows, k).to_pandas()
        position = {value: i for i, value in enumerate(wanted)}
        order = np.lexsort((frame["rank"].to_numpy(), frame["id"].map(position).to_numpy()))
        return frame.iloc[order].reset_index(drop=True)

    def rows_of(self, ids) -> np.ndarray:
        """The artifact rows (indices into neighbors.npy and scores.npy) of one id or many, in the order given."""
        wanted = self._typed_ids(ids, unique=False)
        if not wanted:
            return np.zeros(0, dtype=np.int64)
        groups = self._index_groups(wanted)
        index = self._file(ID_INDEX_PARQUET).read_row_groups(sorted(set(groups)), columns=["id", "row"])
        found = pc.index_in(pa.array(wanted, type=self._id_arrow_type()), value_set=index.column("id"))
        if found.null_count:
            missing = [value for value, hit in zip(wanted, found.is_valid().to_pylist()) if not hit]
            raise NotFound(self._missing_message(missing))
        return index.column("row").take(found).to_numpy()

    def rows(self):
        """Every artifact row's `row, id, input_row` as a pandas DataFrame, in row order (reads rows.parquet)."""
        return self._file(ROWS_PARQUET).read().to_pandas()

    def edges(self):
        """The whole edge list `id, neighbor_id, rank, score` as a pyarrow Dataset (nothing read until asked)."""
        import pyarrow.dataset as ds

        return ds.dataset(self.path(NEIGHBORS_PARQUET), filesystem=self.filesystem, format="parquet")

    # ---- lookups

    def _where(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{name}"

    def _file(self, name: str) -> pq.ParquetFile:
        if name not in self._parquet:
            try:
                self._parquet[name] = pq.ParquetFile(self.filesystem.open_input_file(self.path(name)))
            except (OSError, pa.ArrowException) as exc:
                raise ArtifactError(f"{self._where(name)}: cannot read it ({exc}); the artifact is incomplete or "
                                    "altered: rerun the pipeline") from None
        return self._parquet[name]

    def _id_arrow_type(self) -> pa.DataType:
        return pa.string() if self.manifest.id_type == "string" else pa.int64()

    def _typed_ids(self, ids, unique: bool = True) -> list:
        values = list(ids) if isinstance(ids, Iterable) and not isinstance(ids, (str, bytes)) else [ids]
        string = self.manifest.id_type == "string"
        for value in values:
            if string and not isinstance(value, str):
                raise InvalidRequest(f"id {value!r}: the ids of {self.location} are strings "
                                     f"({self.manifest.id_source}); pass {str(value)!r}")
            if not string and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))):
                raise InvalidRequest(f"id {value!r}: the ids of {self.location} are integers "
                                     f"({self.manifest.id_source}); pass an int")
        values = [value if string else int(value) for value in values]
        return list(dict.fromkeys(values)) if unique else values

    def _checked_k(self, k: int | None) -> int:
        if k is None:
            return self.manifest.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.manifest.k:
            raise InvalidRequest(f"k={k!r}: {self.location} holds {self.manifest.k} neighbours per row; ask for 1 to "
                                f"{self.manifest.k}")
        return int(k)

    def _index_groups(self, wanted: list) -> list[int]:
        """The id index's row group that can hold each id (sorted by id: min/max statistics decide); ids outside
        every group's range get group 0, where the lookup then finds them missing."""
        lows, highs = self._index_bounds()
        if None in lows:  # a group without statistics (an id longer than the writer keeps them for): ask them all
            return [g for value in wanted for g in range(len(lows))
                    if lows[g] is None or lows[g] <= value <= highs[g]] or [0]
        at = np.searchsorted(np.array(highs, dtype=object), np.array(wanted, dtype=object), side="left")
        return [int(g) if g < len(highs) else 0 for g in at]

    def _index_bounds(self) -> tuple[list, list]:
        if self._id_bounds is None:
            meta = self._file(ID_INDEX_PARQUET).metadata
            lows, highs = [], []
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(0).statistics
                known = stats is not None and stats.has_min_max
                lows.append(stats.min if known else None)
                highs.append(stats.max if known else None)
            self._id_bounds = (lows, highs)
        return self._id_bounds

    def _edges_of(self, wanted: list, rows: np.ndarray, k: int) -> pa.Table:
        """The edges of these rows: each row's row group is known from the layout, so only those are read."""
        per_group = int(self.manifest.layout[NEIGHBORS_PARQUET]["rows_per_row_group"])
        edges = self._file(NEIGHBORS_PARQUET)
        expected = -(-self.manifest.rows // per_group)
        if edges.metadata.num_row_groups != expected:
            raise ArtifactError(f"{self._where(NEIGHBORS_PARQUET)}: {edges.metadata.num_row_groups} row groups, its "
                                f"layout says {expected}; the artifact was altered: rerun the pipeline")
        table = edges.read_row_groups(sorted(set((rows // per_group).tolist())))
        keep = pc.is_in(table.column("id"), value_set=pa.array(wanted, type=self._id_arrow_type()))
        if k < self.manifest.k:
            keep = pc.and_(keep, pc.less_equal(table.column("rank"), k))
        return table.filter(keep)

    def _missing_message(self, missing: list) -> str:
        m = self.manifest
        shown = ", ".join(repr(v) for v in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        what = f"id {shown} is" if len(missing) == 1 else f"ids {shown} are"
        hint = "check the id"
        if m.id_source == "row number" and all(0 <= v < m.rows + m.counts.dropped_rows for v in missing):
            # Row-number ids are input rows: one of them missing here was dropped, nothing else.
            rows = "input row" + (f" {shown} was" if len(missing) == 1 else f"s {shown} were")
            return (f"{rows} dropped by Preprocess (NaN or infinite values, input.non_finite: drop), so "
                    f"{self.location} has no neighbours for {'it' if len(missing) == 1 else 'them'}")
        if m.counts.dropped_rows:
            hint = (f"{m.counts.dropped_rows} input row(s) were dropped by Preprocess for NaN or infinite values; "
                    "it may be one of them, else check the id")
        return f"{what} not in {self.location} ({m.rows} rows, ids from {m.id_source}); {hint}"
