"""Sparse input (scipy.sparse .npz) end to end: the reader's rules, the sparse chunks, the sparse kernel.

The sparse form of a matrix gives the artifact its dense .npy gives, byte for byte (canonical normalization and
canonical scores do not depend on how the zeros are stored); the sparse kernel equals brute force across host
counts, budgets and both of its product paths; bad sparse files get one-line errors naming file and row."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from steps import preprocess
from steps.errors import StepError
from steps.formats.normalized import load_normalized
from steps.kernel import Grid, KernelConfig, Pass, all_pairs
from steps.kernel import blocking
from steps.kernel.sparse import SparseCorpus, choose_kernel
from tests.brute import brute_force
from tests.test_input_forms import artifact_of, fails, same_artifact
from tests.test_kernel import pass_lists, run_with_pauses

ROWS, DIM = 150, 400


def tfidf_like(rows=ROWS, dim=DIM, per_row=8, seed=5) -> np.ndarray:
    """Non-negative rows with a few zipf-distributed columns, repeated rows (ties), an empty row."""
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, dim))
    for r in range(rows):
        cols = np.minimum(rng.zipf(1.3, per_row) - 1, dim - 1)
        x[r, cols] += np.round(rng.uniform(0.5, 3, per_row), 1)
    x[11] = x[4]
    x[40] = 0
    return x


def normalized(x: np.ndarray) -> np.ndarray:
    out, _ = preprocess.normalize_rows(x)
    return out


@pytest.fixture(scope="module")
def dense_reference(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        return artifact_of(mp, tmp_path_factory.mktemp("dense"), "dense", lambda d: np.save(d / "m.npy", tfidf_like()))[0]
    finally:
        mp.undo()


def with_duplicates(d):
    """COO entries split in two (the same row and column twice), shuffled, plus explicit zeros: summed, dropped."""
    coo = sp.coo_matrix(tfidf_like())
    rng = np.random.default_rng(0)
    order = rng.permutation(coo.nnz)
    row, col, data = coo.row[order], coo.col[order], coo.data[order]
    half = data / 2
    m = sp.coo_matrix((np.concatenate([half, data - half, np.zeros(5)]),
                       (np.concatenate([row, row, row[:5]]), np.concatenate([col, col, (col[:5] + 1) % DIM]))),
                      shape=coo.shape)
    sp.save_npz(d / "m.npz", m)


SPARSE_FORMS = {
    "csr": lambda d: sp.save_npz(d / "m.npz", sp.csr_matrix(tfidf_like())),
    "csc": lambda d: sp.save_npz(d / "m.npz", sp.csc_matrix(tfidf_like())),
    "coo uncompressed": lambda d: sp.save_npz(d / "m.npz", sp.coo_matrix(tfidf_like()), compressed=False),
    "prefix of three": lambda d: [sp.save_npz(d / f"part-{i}.npz", sp.csr_matrix(part))
                                  for i, part in enumerate(np.array_split(tfidf_like(), 3))],
    "unsorted duplicates and explicit zeros": with_duplicates,
    "integer data": lambda d: sp.save_npz(d / "m.npz", sp.csr_matrix((tfidf_like() * 10).astype(np.int32))),
}


@pytest.mark.parametrize("form", SPARSE_FORMS)
def test_sparse_forms_give_the_artifact_of_the_dense_npy(monkeypatch, tmp_path, dense_reference, form):
    write = SPARSE_FORMS[form]
    out, manifest = artifact_of(monkeypatch, tmp_path, "sparse", write)
    assert manifest["layout"] == "sparse" and manifest["chunk_format"] == "allpairs.sparse-chunk"
    assert manifest["zero_rows"] == 1 and manifest["rows"] == ROWS
    if form == "integer data":  # scaled by 10: the same directions, not the same float64 input
        reference, _ = artifact_of(monkeypatch, tmp_path, "int-npy",
                                   lambda d: np.save(d / "m.npy", (tfidf_like() * 10).astype(np.int32)))
    else:
        reference = dense_reference
    assert same_artifact(out, reference)
    artifact = json.loads((out / "manifest.json").read_text())
    assert {h["kernel"] for h in artifact["hosts"]} == {"sparse"} and artifact["input"]["layout"] == "sparse"


def test_normalizing_sparse_rows_gives_the_bits_of_their_dense_form():
    rng = np.random.default_rng(1)
    for trial in range(30):
        dim = int(rng.integers(3, 2000))
        m = sp.random(60, dim, density=rng.uniform(0.002, 0.4), random_state=trial, format="csr")
        m.data = m.data * rng.normal(size=m.nnz) * 10.0 ** rng.uniform(-200, 200)
        units, zero = preprocess.normalize_sparse_rows(m)
        dense_units, dense_zero = preprocess.normalize_rows(m.toarray())
        assert units.toarray().tobytes() == dense_units.tobytes() and (zero == dense_zero).all()


@pytest.mark.parametrize("threshold", [None, 0.05])  # None: zero products are candidates; 0.05: stored ones only
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_the_sparse_corpus_equals_brute_force_across_hosts_and_budgets(kernel, threshold):
    x = normalized(tfidf_like(300, 500, 6, seed=9))
    expected = brute_force(x, 5, threshold)
    for hosts, budget, block in [(1, 1 << 20, 64), (3, 1 << 16, 32), (4, 1 << 22, None)]:
        corpus = SparseCorpus([sp.csr_matrix(x)], budget, kernel)
        got = all_pairs(corpus, KernelConfig(5, threshold, budget, 2), hosts, block)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1], equal_nan=True), \
            (hosts, budget)


def test_negative_values_and_chunks_of_several_sizes():
    x = tfidf_like(200, 300, 10, seed=2)
    x[::3] *= -1
    x[5, 7] = -2.5
    x = normalized(x)
    chunks = [sp.csr_matrix(part) for part in np.split(x, [13, 90, 150])]
    expected = brute_force(x, 7)
    got = all_pairs(SparseCorpus(chunks, 1 << 18, "sparse"), KernelConfig(7, None, 1 << 18, 2), 3, 48)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1], equal_nan=True)


def test_a_sparse_pass_paused_inside_its_steps_resumes_bit_for_bit(monkeypatch):
    corpus = SparseCorpus([sp.csr_matrix(normalized(tfidf_like(600, 300, 6, seed=3)))], 1 << 14, "sparse")
    grid, config, blocks = Grid(600, 100), KernelConfig(5, 0.05, 1 << 14, 2), range(1, 4)

    reference = pass_lists(Pass(corpus, grid, blocks, config).run())
    monkeypatch.setattr(blocking, "_STOP_POLL_SECONDS", 0)
    got, pauses, _ = run_with_pauses(corpus, grid, blocks, config, np.random.default_rng(4), 20)
    assert got == reference and pauses >= 2


def test_the_kernel_is_chosen_by_density_and_a_densified_tile_that_fits():
    assert choose_kernel(1000, 2 ** 18, 50_000, 1 << 30) == "sparse"  # 50 values a row of 262,144
    assert choose_kernel(1000, 512, 100_000, 1 << 30) == "dense"  # 100 of 512
    assert choose_kernel(1000, 2 ** 16, 30_000_000, 256 << 20) == "sparse"  # dense enough, but no tile fits


def test_a_damaged_sparse_chunk_is_refused_by_name(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sp.save_npz(folder / "m.npz", sp.csr_matrix(tfidf_like()))
    preprocess.preprocess(folder, tmp_path / "out", "in", chunk_rows=60)
    chunk = tmp_path / "out/chunks/chunk-000001.npz"
    with np.load(chunk) as z:
        arrays = dict(z)
    arrays["indices"] = arrays["indices"][::-1].copy()  # columns no longer increasing within rows
    np.savez(chunk, **arrays)
    with pytest.raises(StepError) as info:
        load_normalized(tmp_path / "out", verify=False)
    assert str(info.value) == (f"{chunk}: not a valid allpairs.sparse-chunk chunk: a row's columns are not strictly "
                               "increasing; rerun the Preprocess step")


def raw(name, **arrays):
    """An .npz with exactly these members (what save_npz writes, altered)."""
    return lambda d: np.savez(d / name, **arrays)


def csr(indices, indptr, data=None, shape=(3, 4)):
    data = np.ones(len(indices)) if data is None else np.asarray(data, dtype=float)
    return raw("m.npz", format=np.array("csr"), shape=np.array(shape), indices=np.array(indices),
               indptr=np.array(indptr), data=data)


FIX = "write it with scipy.sparse.save_npz(path, matrix)"
BAD = [
    ("negative column index", csr([0, -1, 2], [0, 1, 2, 3]), {},
     f"m.npz row 1: column index -1 is out of range (the matrix has 4 columns); {FIX} from a valid matrix"),
    ("column index past the width", csr([0, 1, 4], [0, 1, 2, 3]), {},
     f"m.npz row 2: column index 4 is out of range (the matrix has 4 columns); {FIX} from a valid matrix"),
    ("csc row index out of range", raw("m.npz", format=np.array("csc"), shape=np.array((3, 2)),
                                       indices=np.array([0, 3]), indptr=np.array([0, 1, 2]), data=np.ones(2)), {},
     f"m.npz column 1: row index 3 is out of range (the matrix has 3 rows); {FIX} from a valid matrix"),
    ("coo row index out of range", raw("m.npz", format=np.array("coo"), shape=np.array((3, 2)),
                                       row=np.array([0, -2]), col=np.array([0, 1]), data=np.ones(2)), {},
     f"m.npz entry 1: row index -2 is out of range (the matrix has 3 rows); {FIX} from a valid matrix"),
    ("coo column index out of range", raw("m.npz", format=np.array("coo"), shape=np.array((3, 2)),
                                          row=np.array([0, 2]), col=np.array([0, 2]), data=np.ones(2)), {},
     f"m.npz row 2: column index 2 is out of range (the matrix has 2 columns); {FIX} from a valid matrix"),
    ("indptr of the wrong length", csr([0, 1], [0, 1, 2]), {},
     f"m.npz: indptr has 3 entries, but a csr matrix of 3 rows has 4; {FIX}"),
    ("decreasing indptr", csr([0, 1, 2], [0, 2, 1, 3]), {},
     f"m.npz row 1: indptr is not a valid csr index (it must start at 0, never decrease and end at the 3 entries); "
     f"{FIX}"),
    ("data and indices disagree", csr([0, 1, 2], [0, 1, 2, 3], data=[1.0, 2.0]), {},
     f"m.npz: indices and data hold 3 and 2 entries; {FIX}"),
    ("a 3-D shape", raw("m.npz", format=np.array("csr"), shape=np.array((3, 4, 2)), indices=np.array([0]),
                        indptr=np.array([0, 1, 1, 1]), data=np.ones(1)), {},
     f"m.npz: shape (3, 4, 2), but a 2-D (rows, features) matrix is required; {FIX}"),
    ("zero columns", lambda d: sp.save_npz(d / "m.npz", sp.csr_matrix((3, 0))), {},
     "m.npz: matrix has shape (3, 0): zero feature columns; save a matrix with at least one column"),
    ("NaN data", lambda d: sp.save_npz(d / "m.npz", sp.csr_matrix(np.array([[1.0, 0, 0], [0, 0, np.nan]]))), {},
     "m.npz row 1 column 2: value is NaN or missing; fix the input, or set input.non_finite: drop in pipeline.yaml "
     "to drop such rows"),
    ("inf data in a later file", lambda d: (sp.save_npz(d / "a.npz", sp.csr_matrix(np.eye(3))),
                                            sp.save_npz(d / "b.npz", sp.csr_matrix(np.array([[0, np.inf, 0.0]])))),
     {}, "b.npz row 0 column 1: value is +inf; fix the input, or set input.non_finite: drop in pipeline.yaml to drop "
         "such rows"),
    ("dense and sparse in one prefix", lambda d: (np.save(d / "a.npy", np.eye(3)),
                                                  sp.save_npz(d / "b.npz", sp.csr_matrix(np.eye(3)))), {},
     "mixed input formats: a.npy is npy but b.npz is npz; put files of one format under the input prefix"),
    ("column counts differ", lambda d: (sp.save_npz(d / "a.npz", sp.csr_matrix(np.eye(3))),
                                        sp.save_npz(d / "b.npz", sp.csr_matrix(np.eye(4)))), {},
     "b.npz has 4 columns but a.npz has 3; every file of the input must have the same number of columns"),
    ("dense arrays in an .npz", raw("m.npz", x=np.eye(3)), {},
     "m.npz: a .npz of dense arrays (x), not a scipy.sparse matrix; save a dense matrix as .npy (numpy.save), a "
     "sparse one with scipy.sparse.save_npz"),
    ("a bsr matrix", lambda d: sp.save_npz(d / "m.npz", sp.bsr_matrix(np.eye(4))), {},
     "m.npz: a scipy.sparse 'bsr' matrix; save it as CSR, CSC or COO (scipy.sparse.save_npz(path, matrix.tocsr()))"),
    ("an .npy named .npz", lambda d: np.save(open(d / "m.npz", "wb"), np.eye(3)), {},
     f"m.npz: a .npy array named .npz, not a scipy.sparse matrix; rename it to .npy, or {FIX}"),
    ("text data", raw("m.npz", format=np.array("csr"), shape=np.array((1, 2)), indices=np.array([0]),
                      indptr=np.array([0, 1]), data=np.array(["a"])), {},
     "m.npz: data of dtype <U1 is not numeric; save the matrix with float or integer values"),
    ("an id column", lambda d: sp.save_npz(d / "m.npz", sp.csr_matrix(np.eye(3))), {"id_column": "id"},
     "id column 'id' was named (input.id_column), but the input is sparse .npz, which has no named columns; remove "
     "input.id_column (ids are then row numbers)"),
    ("only empty rows", lambda d: sp.save_npz(d / "m.npz", sp.csr_matrix((2, 3))), {}, None),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case[0])
def test_bad_sparse_input_gets_one_line_errors(tmp_path, case):
    _, write, options, expected = case
    if expected is None:  # not an error: rows with no values are all-zero rows
        folder = tmp_path / "in"
        folder.mkdir()
        write(folder)
        assert preprocess.preprocess(folder, tmp_path / "out", "in")["zero_rows"] == 2
        return
    message = fails(tmp_path, write, **options)
    assert message == expected


def test_non_finite_rows_are_dropped_when_asked(tmp_path):
    x = tfidf_like()
    x[7, 3] = np.nan
    folder = tmp_path / "in"
    folder.mkdir()
    sp.save_npz(folder / "m.npz", sp.csr_matrix(x))
    manifest = preprocess.preprocess(folder, tmp_path / "out", "in", non_finite="drop")
    assert manifest["rows"] == ROWS - 1 and manifest["dropped_sample"] == ["m.npz row 7 column 3: value is NaN or missing"]


def test_a_sparse_matrix_is_sized_by_its_values_not_its_width(tmp_path):
    """2**18 columns dense would be 1 TB at 1M rows; 50 values a row in CSR fit a small instance."""
    from steps.contract import NORMALIZED, Host
    from steps.similarity import Settings, check_fits

    folder = tmp_path / NORMALIZED
    folder.mkdir()
    manifest = {"rows": 1_000_000, "dim": 2 ** 18, "layout": "sparse", "nnz": 50_000_000, "chunks": [],
                "ids": {"file": "ids.parquet", "sha256": ""}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings(10, None, 1024, 0)
    check_fits(folder, Host("algo-1", ["algo-1"]), settings, 4 << 30)  # 1,168 MB of CSR + budget + program: fits
    with pytest.raises(StepError) as info:
        check_fits(folder, Host("algo-1", ["algo-1"]), settings, 2 << 30)
    assert str(info.value) == (
        "host algo-1: the normalized matrix (1000000 rows x 262144, 50000000 values in CSR = 1168 MB) plus "
        "memory_budget_mb=1024 and 256 MB for the program need 2448 MB, but only 2048 MB are available; use an "
        "InstanceType with more memory (at least ml.c5.xlarge, 8 GiB), or lower similarity.memory_budget_mb to 624")
