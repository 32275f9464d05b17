"""Incremental reruns: the lists of a changed corpus from the previous lists, byte-identical to a full run."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from steps.incremental import Previous, apply_update, plan_update, row_digests
from steps.kernel import Corpus, KernelConfig, all_pairs
from tests.brute import normalize

K = 6


def _old(seed=0, n=900, dim=12):
    rng = np.random.default_rng(seed)
    X = normalize(rng.standard_normal((n, dim)))
    X[10] = X[n // 2]  # a duplicate: a tie
    X[33] = 0
    ids = np.array([f"id-{i:05d}" for i in range(n)])
    return X, ids, rng


def _result(X, config):
    return all_pairs(Corpus([X]), config, hosts=2, block=512)


def _previous(X, ids, config):
    nb, sc = _result(X, config)
    return Previous(ids, row_digests(Corpus([X])), nb, sc, config.k, config.threshold, "allpairs.normalized 2")


def _digest(*arrays):
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def _changes(kind, X, ids, rng):
    """The new corpus (rows in order: the unchanged ones keep their relative order)."""
    new_X, new_ids = X.copy(), ids.copy()
    if kind in ("change", "all"):
        picked = rng.choice(len(X), 15, replace=False)
        new_X[picked] = normalize(rng.standard_normal((15, X.shape[1])))
        new_X[picked[0]] = X[len(X) // 2]  # changed into a duplicate of another row
    if kind in ("remove", "all"):
        keep = np.ones(len(X), bool)
        keep[rng.choice(len(X), 20, replace=False)] = False
        keep[len(X) // 2] = False  # a row many lists hold (the duplicate's twin)
        new_X, new_ids = new_X[keep], new_ids[keep]
    if kind in ("add", "all"):
        extra = normalize(rng.standard_normal((18, X.shape[1])))
        extra[0] = X[7]  # a new duplicate of an old row
        extra[1] = 0
        where = rng.choice(len(new_X), 18)  # inserted anywhere: the old rows keep their order
        new_X = np.insert(new_X, where, extra, axis=0)
        new_ids = np.insert(new_ids, where, [f"new-{i}" for i in range(18)])
    return new_X, new_ids


@pytest.mark.parametrize("kind", ["add", "remove", "change", "all"])
@pytest.mark.parametrize("threshold", [None, 0.2])
def test_an_update_is_byte_identical_to_a_full_run(kind, threshold):
    X, ids, rng = _old()
    config = KernelConfig(K, threshold, 1 << 20, 2)
    previous = _previous(X, ids, config)
    new_X, new_ids = _changes(kind, X, ids, rng)
    corpus = Corpus([new_X[:400], new_X[400:]])
    update = plan_update(previous, new_ids, row_digests(corpus), K, threshold, "allpairs.normalized 2")
    assert not isinstance(update, str), update
    got = apply_update(previous, update, corpus, config)
    want = _result(new_X, config)
    assert _digest(*got) == _digest(*want)
    # Computed against the whole corpus: the added and changed rows and those that lost a neighbour, no other.
    assert len(update.fresh) == update.added + update.changed + update.lost
    assert len(update.clean) == len(new_X) - len(update.fresh)
    counts = {"add": (18, 0, 0), "remove": (0, 0, 21), "change": (0, 15, 0), "all": (18, None, 21)}[kind]
    for name, value in zip(("added", "changed", "removed"), counts):
        if value is not None:
            assert getattr(update, name) == value


def test_reasons_for_a_full_run():
    X, ids, rng = _old(n=300)
    config = KernelConfig(K, None, 1 << 20, 1)
    previous = _previous(X, ids, config)
    digests = row_digests(Corpus([X]))
    assert plan_update(previous, ids, digests, K + 1, None, "allpairs.normalized 2") == (
        "the previous result was computed with k=6, threshold=None, normalization allpairs.normalized 2, this run "
        "asks k=7, threshold=None, normalization allpairs.normalized 2: a full run")
    order = np.r_[1, 0, 2:len(X)]
    assert plan_update(previous, ids[order], digests[order], K, None, "allpairs.normalized 2") == (
        "the unchanged rows are not in their previous order (ties are broken by row order, so the previous lists "
        "would not be those of a full run): a full run")
    assert plan_update(previous, np.array(["x"]), digests[:1], K, None, "allpairs.normalized 2") == (
        "no row is unchanged: a full run")


def test_digests_tell_rows_apart():
    X, _, _ = _old(n=50)
    d = row_digests(Corpus([X]))
    Y = X.copy()
    Y[3, 0] = np.nextafter(Y[3, 0], np.float32(2))  # one ulp
    assert (row_digests(Corpus([Y])) != d).tolist() == [i == 3 for i in range(50)]
    assert len(set(d.tolist())) == 49 and row_digests(Corpus([X.copy()])).tolist() == d.tolist()
