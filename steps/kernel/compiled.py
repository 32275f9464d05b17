"""The selection's hot loop, compiled with numba: one pass over a float32 product tile admits candidates into
per-row heaps, for the tile's rows and (mirrored) for its columns at once.

Each heap holds `width` uint64 keys (a score's sortable bits above a row index, see selection.py), a min-heap
whose root is the worst kept candidate; empty slots hold PAD_KEY, below every real key, so a heap is always
"full" and a candidate enters when its key beats the root. A row's bar (the root's score, never below the
admission floor; +inf for an all-zero row) is compared first as a float, so the common case, a score that
cannot enter, costs one comparison per direction. Compiled once and cached (NUMBA_CACHE_DIR; the image
compiles it at build time), it releases the GIL: the kernel's workers run it side by side.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, inline="always")
def _sortable(bits):
    """float32 bits -> uint32 whose unsigned order is the float order."""
    if bits >> np.uint32(31):
        return ~bits
    return bits | np.uint32(0x80000000)


@njit(nogil=True, cache=True, inline="always")
def _replace_root(heap, key):
    """Replace a min-heap's root with `key` (larger than it) and restore the heap."""
    w = heap.shape[0]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= w:
            break
        child = left
        right = left + 1
        if right < w and heap[right] < heap[left]:
            child = right
        if heap[child] >= key:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = key


@njit(nogil=True, cache=True, inline="always")
def _bar(heap_root, floor, scratch_u32, scratch_f32):
    """The score of a heap's root (its worst kept candidate), never below the admission floor."""
    high = np.uint32(heap_root >> np.uint64(32))
    if high >> np.uint32(31):
        scratch_u32[0] = high & np.uint32(0x7FFFFFFF)
    else:
        scratch_u32[0] = ~high
    s = scratch_f32[0]
    return s if s > floor else floor


@njit(nogil=True, cache=True)
def admit(S, row_keys, row_bar, row0, row_zero, col_keys, col_bar, col0, col_zero, floor, mirrored):
    """Admit the candidates of product tile S (rows row0.., columns col0.. of the corpus).

    row_keys (n, w) / row_bar (n,): the heaps and bars of the tile's rows; col_keys (m, w) / col_bar (m,): of its
    columns, updated only when `mirrored` (a pair of query tiles: S serves both). row_zero / col_zero: all-zero
    rows, never admitted (their own bars are +inf). A row is never its own candidate.

    Per tile row, a branch-free pass (vectorised) flags the scores that beat the row's bar or their column's;
    rows without a flag are done, the others are walked 8 flags at a time.
    """
    n, m = S.shape
    bits = S.view(np.uint32)
    scratch_u32 = np.empty(1, np.uint32)
    scratch_f32 = scratch_u32.view(np.float32)
    groups = (m + 7) // 8
    flags = np.zeros(groups * 8, np.uint8)
    flag_words = flags.view(np.uint64)
    for r in range(n):
        row = S[r]
        rb = row_bar[r]
        hit = np.uint8(0)
        if mirrored:
            for c in range(m):
                f = np.uint8((row[c] >= rb) | (row[c] >= col_bar[c]))
                flags[c] = f
                hit |= f
        else:
            for c in range(m):
                f = np.uint8(row[c] >= rb)
                flags[c] = f
                hit |= f
        if hit == 0:
            continue
        grow = row0 + r
        for g in range(groups):
            if flag_words[g] == 0:
                continue
            for c in range(g * 8, min(g * 8 + 8, m)):
                if flags[c] == 0:
                    continue
                s = row[c]
                gcol = col0 + c
                if s >= rb and not col_zero[c] and gcol != grow:
                    key = (np.uint64(_sortable(bits[r, c])) << np.uint64(32)) | np.uint64(gcol)
                    if key > row_keys[r, 0]:
                        _replace_root(row_keys[r], key)
                        rb = _bar(row_keys[r, 0], floor, scratch_u32, scratch_f32)
                if mirrored and s >= col_bar[c] and not row_zero[r] and gcol != grow:
                    key = (np.uint64(_sortable(bits[r, c])) << np.uint64(32)) | np.uint64(grow)
                    if key > col_keys[c, 0]:
                        _replace_root(col_keys[c], key)
                        col_bar[c] = _bar(col_keys[c, 0], floor, scratch_u32, scratch_f32)
        row_bar[r] = rb


@njit(nogil=True, cache=True)
def invert(b_indptr, b_indices, b_data, colmap):
    """A CSR tile by column, for admit_product: (its columns that two rows share (below len(colmap)) in order of
    appearance, each one's start in the lists, the lists' rows, the lists' values). `colmap` as admit_product's."""
    shared = colmap.shape[0]
    m = b_indptr.shape[0] - 1
    nnz_b = b_indptr[m]
    cols = np.empty(nnz_b, np.int64)
    local = 0
    for p in range(nnz_b):
        c = b_indices[p]
        if c < shared and colmap[c] < 0:
            colmap[c] = local
            cols[local] = c
            local += 1
    starts = np.zeros(local + 1, np.int64)
    for p in range(nnz_b):
        c = b_indices[p]
        if c < shared:
            starts[colmap[c] + 1] += 1
    for i in range(local):
        starts[i + 1] += starts[i]
    fill = starts[:local].copy()
    rows = np.empty(starts[local], np.int64)
    values = np.empty(starts[local], np.float32)
    for j in range(m):
        for p in range(b_indptr[j], b_indptr[j + 1]):
            c = b_indices[p]
            if c < shared:
                lc = colmap[c]
                rows[fill[lc]] = j
                values[fill[lc]] = b_data[p]
                fill[lc] += 1
    for i in range(local):
        colmap[cols[i]] = -1
    return cols[:local].copy(), starts, rows, values


@njit(nogil=True, cache=True)
def admit_product(a_indptr, a_indices, a_data, cols, starts, inv_rows, inv_vals, m, colmap, row_keys, row_bar,
                  row0, row_zero, col_keys, col_bar, col0, col_zero, floor, mirrored):
    """admit() fused with the sparse product of two CSR tiles A (the rows) and B (the columns, `m` rows, given
    inverted by `invert`): each pair of rows that shares a column gets its float32 dot (Gustavson's row-by-row
    product: A's values scattered into an accumulator along B's column lists), admitted as it is made; pairs
    sharing no column (score exactly 0) are never made: a pass calls this only when MinScore > 0 keeps them out
    of every list. `colmap` int64 scratch, all -1 on entry and on return, one entry per column two rows share:
    columns numbered beyond it (held by one row only, sparse.py numbers them last) are skipped. Same heaps, bars
    and rules as admit."""
    shared = colmap.shape[0]
    n = a_indptr.shape[0] - 1
    for i in range(cols.shape[0]):
        colmap[cols[i]] = i
    acc = np.zeros(m, np.float32)
    seen = np.zeros(m, np.uint8)
    touched = np.empty(m, np.int64)
    scratch_u32 = np.empty(1, np.uint32)
    scratch_f32 = scratch_u32.view(np.float32)
    value = np.empty(1, np.float32)
    value_bits = value.view(np.uint32)
    for r in range(n):
        count = 0
        for p in range(a_indptr[r], a_indptr[r + 1]):
            if a_indices[p] >= shared:
                continue
            lc = colmap[a_indices[p]]
            if lc < 0:
                continue
            v = a_data[p]
            for q in range(starts[lc], starts[lc + 1]):
                j = inv_rows[q]
                if seen[j] == 0:
                    seen[j] = 1
                    touched[count] = j
                    count += 1
                acc[j] += v * inv_vals[q]
        rb = row_bar[r]
        grow = row0 + r
        for t in range(count):
            c = touched[t]
            s = acc[c]
            acc[c] = 0
            seen[c] = 0
            gcol = col0 + c
            if gcol == grow:
                continue
            value[0] = s
            if s >= rb and not col_zero[c]:
                key = (np.uint64(_sortable(value_bits[0])) << np.uint64(32)) | np.uint64(gcol)
                if key > row_keys[r, 0]:
                    _replace_root(row_keys[r], key)
                    rb = _bar(row_keys[r, 0], floor, scratch_u32, scratch_f32)
            if mirrored and s >= col_bar[c] and not row_zero[r]:
                key = (np.uint64(_sortable(value_bits[0])) << np.uint64(32)) | np.uint64(grow)
                if key > col_keys[c, 0]:
                    _replace_root(col_keys[c], key)
                    col_bar[c] = _bar(col_keys[c, 0], floor, scratch_u32, scratch_f32)
        row_bar[r] = rb
    for i in range(cols.shape[0]):
        colmap[cols[i]] = -1


@njit(nogil=True, cache=True)
def sparse_dots(q_indptr, q_indices, q_data, q_rows, c_indptr, c_indices, c_data, c_rows):
    """float64 dot products of CSR rows q_rows[p] (of q) and c_rows[p] (of c), each row's columns sorted: the
    products of shared columns (exact in float64 for float32 values) summed in column order; and the sums of
    their magnitudes (what the summation's rounding error is bounded by)."""
    out = np.empty(q_rows.shape[0], np.float64)
    magnitude = np.empty(q_rows.shape[0], np.float64)
    for p in range(q_rows.shape[0]):
        i, end_i = q_indptr[q_rows[p]], q_indptr[q_rows[p] + 1]
        j, end_j = c_indptr[c_rows[p]], c_indptr[c_rows[p] + 1]
        total = 0.0
        size = 0.0
        while i < end_i and j < end_j:
            a, b = q_indices[i], c_indices[j]
            if a == b:
                product = np.float64(q_data[i]) * np.float64(c_data[j])
                total += product
                size += abs(product)
                i += 1
                j += 1
            elif a < b:
                i += 1
            else:
                j += 1
        out[p] = total
        magnitude[p] = size
    return out, magnitude


def warm_up() -> None:
    """Compile (or load from the cache) every signature the kernel calls, by running it on a small matrix."""
    from .blocking import KernelConfig, all_pairs
    from .corpus import Corpus

    X = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    all_pairs(Corpus([X]), KernelConfig(3, None, 1 << 16, 2), hosts=2, block=16)  # own and mirrored tiles
    import scipy.sparse as sp

    from .sparse import SparseCorpus

    X[np.abs(X) < 0.5] = 0  # a sparse corpus with MinScore > 0: selection from a product's stored values
    all_pairs(SparseCorpus([sp.csr_matrix(X)], 1 << 16, "sparse"), KernelConfig(3, 0.1, 1 << 16, 2), hosts=2, block=16)

