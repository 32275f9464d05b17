"""The blocked kernel equals brute force, for every block size, chunking and host split."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from steps.kernel import Corpus, Grid, KernelConfig, all_pairs, canonical_scores, dot_error_bound
from tests.brute import brute_force, normalize


def run(X, k, min_score=None, budget=1 << 20, chunk=None, hosts=1, block=None, threads=0):
    """Every row's top-k as `hosts` hosts compute it on a grid of `block` rows (default: about 7 blocks)."""
    chunk = chunk or max(len(X), 1)
    corpus = Corpus([X[i: i + chunk] for i in range(0, len(X), chunk)])
    block = block or max(1, -(-len(X) // 7))
    return all_pairs(corpus, KernelConfig(k, min_score, budget, threads), hosts, block)


def tricky_matrix(rng, n, d):
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[n // 3] = X[1]                       # duplicates: exact ties, both real neighbours
    X[n // 2] = X[1]
    X[2] = 0                               # a zero row
    X[5: 5 + n // 4] = np.round(X[5: 5 + n // 4])  # many exact ties among small-integer rows
    return normalize(X)


@pytest.mark.parametrize("budget", [1 << 14, 1 << 18, 1 << 26])
@pytest.mark.parametrize("chunk", [13, 64, None])
@pytest.mark.parametrize("hosts", [1, 2, 5])
@pytest.mark.parametrize("block", [17, 40, 200])  # odd and even block counts; one block
def test_equals_brute_force_for_any_blocking(budget, chunk, hosts, block):
    X = tricky_matrix(np.random.default_rng(1), 200, 6)
    for k, thr in [(7, None), (7, 0.4)]:
        neighbors, scores = run(X, k, thr, budget, chunk, hosts, block)
        bn, bs = brute_force(X, k, thr)
        assert np.array_equal(neighbors, bn)
        assert np.array_equal(scores, bs, equal_nan=True)


@pytest.mark.parametrize("blocks", range(1, 12))
def test_every_pair_of_blocks_is_in_exactly_one_window_and_windows_cost_the_same(blocks):
    grid = Grid(blocks * 10, 10)
    pairs = [(i, j) for i in range(blocks) for j in grid.window(i)]
    assert len(set(frozenset(p) for p in pairs)) == len(pairs) == blocks * (blocks + 1) // 2
    assert all(grid.in_window(i, j) == (j in grid.window(i)) for i in range(blocks) for j in range(blocks))
    sizes = {len(grid.window(i)) for i in range(blocks)}
    assert max(sizes) - min(sizes) <= 1
    for hosts in range(1, blocks + 2):  # host shares tile the block rows
        assert [b for h in range(hosts) for b in grid.host_blocks(h, hosts)] == list(range(blocks))


def test_bit_identical_across_hosts_and_budgets():
    X = normalize(np.random.default_rng(2).standard_normal((700, 48)))
    reference = run(X, 12)
    for budget, chunk, hosts, block in [(1 << 14, 50, 3, 64), (1 << 30, None, 1, 700), (1 << 17, 333, 7, 33)]:
        neighbors, scores = run(X, 12, budget=budget, chunk=chunk, hosts=hosts, block=block)
        assert neighbors.tobytes() == reference[0].tobytes()
        assert scores.tobytes() == reference[1].tobytes()


def test_semantics_ties_self_zero_rows_and_padding():
    X = normalize(np.array([[1, 0], [1, 0], [0, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32))
    neighbors, scores = run(X, 4)
    # Row 0: the duplicates 1 and 3 tie at 1.0 (lower index first); the zero row 2 is nobody's neighbour.
    assert neighbors[0].tolist() == [1, 3, 4, 5]
    assert scores[0].tolist() == [1.0, 1.0, 0.0, -1.0]
    assert neighbors[2].tolist() == [-1, -1, -1, -1] and np.isnan(scores[2]).all()
    assert 2 not in neighbors


def test_threshold_is_inclusive_and_pads():
    X = normalize(np.array([[1, 0], [1, 1], [0, 1], [-1, 0]], dtype=np.float32))
    exact = canonical_scores(X[:1], X[None, 1:2])[0, 0]
    neighbors, scores = run(X, 3, min_score=float(exact))
    assert neighbors[0].tolist() == [1, -1, -1]
    assert scores[0, 0] == exact and np.isnan(scores[0, 1:]).all()


@pytest.mark.parametrize("n,k", [(1, 1), (1, 5), (2, 5), (9, 8), (9, 9), (9, 50)])
def test_k_at_least_rows_and_single_row(n, k):
    X = normalize(np.random.default_rng(n).standard_normal((n, 3)))
    neighbors, scores = run(X, k)
    bn, bs = brute_force(X, k)
    assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)
    assert (neighbors[:, n - 1:] == -1).all()


def test_many_near_ties_widen_the_row():
    # 300 copies of one direction plus tiny perturbations: far more near-ties than the selection buffer.
    rng = np.random.default_rng(3)
    base = rng.standard_normal(16)
    X = normalize(base + rng.standard_normal((300, 16)) * 1e-7)
    neighbors, scores = run(X, 5, budget=1 << 14, chunk=37, hosts=3)
    bn, bs = brute_force(X, 5)
    assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)


def test_error_bound_covers_float32_products():
    X = normalize(np.random.default_rng(4).standard_normal((300, 512)))
    approx = X @ X.T
    exact = X.astype(np.float64) @ X.astype(np.float64).T
    assert np.abs(approx - exact).max() < dot_error_bound(512)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40), d=st.integers(1, 5), k=st.integers(1, 12), hosts=st.integers(1, 6),
    budget=st.sampled_from([1 << 12, 1 << 16, 1 << 24]), chunk=st.integers(1, 41), block=st.integers(1, 41),
    thr=st.sampled_from([None, -0.5, 0.0, 0.5, 1.0]), seed=st.integers(0, 2**16),
)
def test_property_equals_brute_force(n, d, k, hosts, budget, chunk, block, thr, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, size=(n, d)).astype(np.float32)  # small integers: duplicates, zeros and ties
    Xn = normalize(X)
    neighbors, scores = run(Xn, k, thr, budget, chunk, hosts, block)
    bn, bs = brute_force(Xn, k, thr)
    assert np.array_equal(neighbors, bn)
    assert np.array_equal(scores, bs, equal_nan=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bit_identical_across_thread_counts(threads):
    X = tricky_matrix(np.random.default_rng(5), 500, 8)
    corpus = Corpus([X[:170], X[170:]])
    neighbors, scores = all_pairs(corpus, KernelConfig(9, None, 1 << 16, threads), hosts=2, block=90)
    bn, bs = brute_force(X, 9)
    assert neighbors.tobytes() == bn.tobytes() and scores.tobytes() == bs.tobytes()


def test_large_tiles_estimate_and_mirror_paths():
    # Tiles wide enough for the early bar's column groups (>= 4 * width columns) and several tiles per group,
    # so both the direct and the mirrored (S.T) admission run; clustered rows make thresholds uneven.
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((5, 24))
    X = normalize(centres[rng.integers(0, 5, 1500)] + 0.3 * rng.standard_normal((1500, 24)))
    X[7] = X[900]
    X[11] = 0
    for k, thr in [(10, None), (40, 0.5)]:
        neighbors, scores = run(X, k, thr, budget=1 << 23, chunk=600, hosts=2, block=300)
        bn, bs = brute_force(X, k, thr)
        assert np.array_equal(neighbors, bn) and np.array_equal(scores, bs, equal_nan=True)


def test_canonical_scores_are_the_float32_rounding_of_the_exact_dot_product():
    import math

    rng = np.random.default_rng(11)
    q = normalize(rng.standard_normal((6, 40)))
    c = normalize(rng.standard_normal((6 * 30, 40))).reshape(6, 30, 40)
    exact = np.array([[np.float32(math.fsum((q[i].astype(np.float64) * c[i, j].astype(np.float64)).tolist()))
                       for j in range(30)] for i in range(6)])
    assert canonical_scores(q, c).tobytes() == exact.tobytes()
    # 1 - 2**-25 lies exactly between two float32 values: only the exact sum can decide (ties to even: 1.0),
    # and 1 - 2**-25 - 2**-40 rounds down. Either way the fast float64 product is too close to call.
    q = np.array([[1, 2**-25, 2**-40]], dtype=np.float32)
    c = np.array([[[1, -1, 0], [1, -1, -1]]], dtype=np.float32)
    assert canonical_scores(q, c).tolist() == [[1.0, float(np.nextafter(np.float32(1), np.float32(0)))]]


def test_identical_rows_score_exactly_one_and_no_score_leaves_minus_one_to_one():
    """A stored unit row's float32 rounding makes v . v = 0.99999994 or 1.0000001 now and then: the canonical score
    of a row and an identical one is 1.0 (and -1.0 for its exact negative), and every score lies in [-1, 1]."""
    rng = np.random.default_rng(5)
    X = normalize(rng.standard_normal((400, 48)))
    self_dots = np.array([np.float32(np.dot(x.astype(np.float64), x.astype(np.float64))) for x in X])
    assert (self_dots != 1).any()  # the case this is about does occur
    scores = canonical_scores(X, np.stack([X, -X, X[::-1]], axis=1))
    assert (scores[:, 0] == 1).all() and (scores[:, 1] == -1).all() and (np.abs(scores) <= 1).all()
    # And through the kernel: duplicated rows are each other's neighbour at exactly 1.0, kept by MinScore=1.0.
    D = np.repeat(X[:50], 2, axis=0)
    neighbors, scores = run(D, 3, min_score=1.0)
    assert (neighbors[:, 0] == np.arange(100) ^ 1).all() and (scores[:, 0] == 1).all()
    assert (neighbors[:, 1:] == -1).all()


def pass_lists(events) -> list:
    """A pass's partial lists, comparable bit for bit."""
    from steps.kernel import PartialList
    return sorted((e.start, e.columns, e.neighbors.tobytes(), e.scores.tobytes())
                  for e in events if isinstance(e, PartialList))


def run_with_pauses(corpus, grid, blocks, config, rng, most_polls: int):
    """Run a pass paused after a random number of stop polls (at most `most_polls`), each pause snapshotted into
    a fresh Pass as a restarted host restores a checkpoint; returns (its lists, pauses, pauses inside a step).
    The caller sets blocking._STOP_POLL_SECONDS to 0, so the stop is polled without waiting."""
    from steps.kernel import Pass, PartialList, Paused, Snapshot
    got, snapshot, pauses, inside = [], None, 0, 0
    while True:
        p = Pass(corpus, grid, blocks, config)
        if snapshot is not None:
            p.restore(Snapshot(**vars(snapshot)))
        polls = iter(range(int(rng.integers(1, most_polls)), -1, -1))
        events = list(p.run(stop=lambda: next(polls, 0) == 0))
        got += [e for e in events if isinstance(e, PartialList)]
        if not isinstance(events[-1], Paused):
            return pass_lists(got), pauses, inside
        got += p.flush()
        snapshot = p.snapshot()
        pauses += 1
        inside += snapshot.done is not None and 0 < snapshot.done.sum() < len(snapshot.done)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_pass_paused_at_arbitrary_moments_inside_its_steps_resumes_bit_for_bit(monkeypatch, seed):
    """Pauses land inside steps (the stop is polled without waiting), each one snapshotted into a fresh Pass
    (as a restarted host restores a checkpoint): the lists equal the uninterrupted pass's, bit for bit."""
    from steps.kernel import Pass
    from steps.kernel import blocking

    X = tricky_matrix(np.random.default_rng(seed), 900, 12)
    corpus = Corpus([X])
    grid = Grid(900, 128)  # 8 blocks
    config = KernelConfig(5, None, 1 << 14, 2)  # tiny tiles: many products per step
    blocks = range(2, 5)
    reference = pass_lists(Pass(corpus, grid, blocks, config).run())
    monkeypatch.setattr(blocking, "_STOP_POLL_SECONDS", 0)
    got, pauses, inside = run_with_pauses(corpus, grid, blocks, config, np.random.default_rng(seed), 40)
    assert got == reference
    assert pauses >= 3 and inside >= 1  # the pauses did land inside steps, partway through their products


def test_the_compiled_selection_is_built_once_and_loaded_by_every_later_host(tmp_path):
    """As in the image: `python -m steps.kernel` at build time fills NUMBA_CACHE_DIR for the haswell feature
    set; a later process running the kernel for real (mirrored tiles, a threshold) compiles nothing."""
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_CPU_NAME": "haswell"}
    build = subprocess.run([sys.executable, "-m", "steps.kernel"], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert ": 4 signature(s) compiled, 0 loaded" in build  # dense selection; sparse product, its inversion, dots
    host = ("import numpy as np, scipy.sparse as sp; from steps.kernel import Corpus, KernelConfig, all_pairs; "
            "from steps.kernel.sparse import SparseCorpus; "
            "from steps.kernel.compiled import admit, admit_product, invert, sparse_dots; "
            "X = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32); "
            "X /= np.linalg.norm(X, axis=1, keepdims=True); "
            "all_pairs(Corpus([X]), KernelConfig(7, 0.1, 1 << 20, 2), hosts=3, block=700); "
            "X[np.abs(X) < 0.3] = 0; "
            "all_pairs(SparseCorpus([sp.csr_matrix(X)], 1 << 20, 'sparse'), KernelConfig(7, 0.1, 1 << 20, 2), "
            "hosts=3, block=700); "
            "print(*(sum(f.stats.cache_misses.values()) for f in (admit, admit_product, invert, sparse_dots)), "
            "*(sum(f.stats.cache_hits.values()) for f in (admit, admit_product, invert, sparse_dots)))")
    out = subprocess.run([sys.executable, "-c", host], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "0", "0", "0", "1", "1", "1", "1"]
