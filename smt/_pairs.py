"""Co-activation counts of binary codes on CPU, compiled and cache-blocked (needs numba).

With binary codes the code statistics are integer counts: ``sum_n w_n [a in A_n] [b in B_n]`` for
the active-atom sets A_n, B_n of row n and an integer row weight w_n (1 for G, a node degree or a
patch count for the context terms). Scattering every pair into the (K, K) float64 sum misses the
cache on nearly every update (K 8192: 512 MiB), and so does reading every row's list once per
block of the result. Here:

- each row's atoms are first sorted into the 512-atom blocks of the result, in one walk of the
  row, as two-byte offsets within the block (a block's lists for all rows are one contiguous run);
- the (K, K) result is walked in 512 x 512 tiles (an int32 tile is 1 MiB, this CPU's L2): tile
  (i, j) streams the runs of blocks i and j once and adds every row's pairs into the tile. Larger
  tiles than 256 cost more cache misses per pair but far less loop overhead: a row has about 8
  atoms in a block instead of 4 at K 8192, and 1.6x the pair rate was measured
  (benchmarks/RESULTS.md, "Stop 18");
- each tile is then added, times a scale, to one or two float64 sums; symmetric statistics
  (``A_n = B_n``) walk the upper triangle of tiles only and mirror each as it is flushed.

Tiles are independent and integer sums are exact, so the result does not depend on threads or
order (benchmarks/RESULTS.md, "Speed").
"""
import numba
import numpy as np

from smt._compiled import compiled_section

# Tile side; offsets within a tile fit two bytes.
TILE = 512
_SHIFT = 9
# An int32 tile entry grows by at most |w| per row: rows are cut into parts with |w| * rows below this.
_INT32_ROOM = (1 << 31) - 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_counts(idx):
    counts = np.zeros(idx.shape[0], np.int64)
    for i in numba.prange(idx.shape[0]):
        c = 0
        for j in range(idx.shape[1]):
            if idx[i, j] >= 0:
                c += 1
        counts[i] = c
    return counts


@numba.njit(parallel=True, cache=True, nogil=True)
def _fill_rows(idx, val, ptr, ind, row_value, flags):
    """Valid entries of each padded row, sorted, into ``ind[ptr[i]:ptr[i+1]]``; the row's common
    value into ``row_value`` (NaN when its values differ); flags[i] = 1 when the row repeats an atom."""
    for i in numba.prange(idx.shape[0]):
        o = ptr[i]
        c = 0
        v = 0.0
        same = True
        for j in range(idx.shape[1]):
            if idx[i, j] >= 0:
                x = val[i, j]
                if c == 0:
                    v = x
                elif x != v:
                    same = False
                ind[o + c] = idx[i, j]
                c += 1
        seg = ind[o:o + c]
        for j in range(1, c):
            if seg[j] < seg[j - 1]:
                seg.sort()
                break
        dup = 0
        for j in range(1, c):
            if seg[j] == seg[j - 1]:
                dup = 1
                break
        flags[i] = dup
        row_value[i] = v if same else np.nan


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_block_counts(ind, ptr, rows, n_blocks):
    counts = np.zeros((len(rows), n_blocks), np.uint16)
    for r in numba.prange(len(rows)):
        i = rows[r]
        for p in range(ptr[i], ptr[i + 1]):
            counts[r, ind[p] >> _SHIFT] += 1
    return counts


@numba.njit(parallel=True, cache=True, nogil=True)
def _fill_blocks(ind, ptr, rows, offsets, local):
    """Each row's atoms, walked once in order, into its place in every block's run."""
    for r in numba.prange(len(rows)):
        i = rows[r]
        t_prev = -1
        o = 0
        for p in range(ptr[i], ptr[i + 1]):
            a = ind[p]
            t = a >> _SHIFT
            if t != t_prev:
                o = offsets[t, r]
                t_prev = t
            local[o] = a - (t << _SHIFT)
            o += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _add_tiles(target, scale, target2, scale2, local_a, counts_a, starts_a, local_b, counts_b, starts_b,
               weight, tiles, symmetric):
    k = target.shape[0]
    n = counts_a.shape[1]
    for t in numba.prange(tiles.shape[0]):
        ti, tj = tiles[t, 0], tiles[t, 1]
        acc = np.zeros(TILE * TILE, np.int32)
        pa, pb = starts_a[ti], starts_b[tj]
        diag = symmetric and ti == tj
        for r in range(n):
            ca, cb = np.int64(counts_a[ti, r]), np.int64(counts_b[tj, r])
            if ca != 0 and cb != 0:
                w = weight[r]
                for i in range(ca):
                    base = np.int64(local_a[pa + i]) * TILE
                    for j in range(i if diag else 0, cb):
                        acc[base + local_b[pb + j]] += w
            pa += ca
            pb += cb
        r0, c0 = ti * TILE, tj * TILE
        rn, cn = min(TILE, k - r0), min(TILE, k - c0)
        for x in range(rn):
            for y in range(cn):
                v = acc[x * TILE + y]
                target[r0 + x, c0 + y] += scale * v
                if scale2 != 0:
                    target2[r0 + x, c0 + y] += scale2 * v
        if symmetric:
            # The mirror image: the whole tile off the diagonal, its strict upper part on it.
            for y in range(cn):
                for x in range(rn if ti != tj else y):
                    v = acc[x * TILE + y]
                    target[c0 + y, r0 + x] += scale * v
                    if scale2 != 0:
                        target2[c0 + y, r0 + x] += scale2 * v


def padded_to_csr(idx, val):
    """Sorted CSR rows of padded codes, with each row's common coefficient.

    Parameters
    ----------
    idx : ndarray of shape (n, m), int
        Active atoms, -1 pads (anywhere in the row; repeated atoms allowed).
    val : ndarray of shape (n, m), float
        Their coefficients.

    Returns
    -------
    ind : ndarray of shape (nnz,), int32
        Each row's atoms in ascending order.
    ptr : ndarray of shape (n + 1,), int64
    row_value : ndarray of shape (n,), float64
        The coefficient all of a row's atoms share (0 for an empty row), NaN where they differ.
    repeats : bool
        Whether some row lists an atom more than once.
    """
    idx = np.ascontiguousarray(idx)
    val = np.ascontiguousarray(val)
    with compiled_section():
        counts = _row_counts(idx)
        ptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=ptr[1:])
        ind = np.empty(int(ptr[-1]), np.int32)
        row_value = np.empty(len(counts), np.float64)
        flags = np.zeros(len(counts), np.uint8)
        _fill_rows(idx, val, ptr, ind, row_value, flags)
    return ind, ptr, row_value, bool(flags.any())


def add_pair_counts(targets, ind_a, ptr_a, weight, ind_b=None, ptr_b=None):
    """``target += scale * sum_n weight[n] [a in row n of A] [b in row n of B]`` for each target, exactly.

    Parameters
    ----------
    targets : list of (ndarray of shape (K, K), float64, C-contiguous; float) pairs
        One or two sums and their scales, updated in place.
    ind_a, ptr_a : ndarray (int32), ndarray (int64)
        CSR rows of A with sorted atoms. A row must not list an atom twice when B is A.
    weight : ndarray of shape (n,), integer
    ind_b, ptr_b : CSR rows of B, optional
        None: B is A, and only the upper triangle is counted, then mirrored.
    """
    if not 1 <= len(targets) <= 2:
        raise ValueError("add_pair_counts adds into one or two sums")
    (target, scale), (target2, scale2) = targets[0], (targets + [(targets[0][0], 0.0)])[1]
    k = target.shape[0]
    symmetric = ind_b is None
    if symmetric:
        ind_b, ptr_b = ind_a, ptr_a
    weight = np.asarray(weight, dtype=np.int64)
    n_blocks = -(-k // TILE)
    tiles = [(i, j) for i in range(n_blocks) for j in range(i if symmetric else 0, n_blocks)]
    # A fixed interleaving spreads the heavy and light tiles over the threads' contiguous shares.
    tiles = np.array(tiles, np.int64)[np.random.default_rng(0).permutation(len(tiles))]
    rows = np.flatnonzero((weight != 0) & (np.diff(ptr_a) > 0) & (np.diff(ptr_b) > 0))
    if len(rows) == 0:
        return
    step = max(1, _INT32_ROOM // max(int(np.abs(weight[rows]).max()), 1))
    with compiled_section():
        for s in range(0, len(rows), step):
            part = rows[s:s + step]
            a = _blocks(ind_a, ptr_a, part, n_blocks)
            b = a if symmetric else _blocks(ind_b, ptr_b, part, n_blocks)
            _add_tiles(target, float(scale), target2, float(scale2), *a, *b, weight[part].astype(np.int32),
                       tiles, symmetric)


def _blocks(ind, ptr, rows, n_blocks):
    counts = _row_block_counts(ind, ptr, rows, n_blocks).T.copy()
    offsets = np.empty(counts.shape, np.int64)
    np.cumsum(counts, axis=1, out=offsets[:, :])
    totals = offsets[:, -1].copy()
    offsets -= counts
    starts = np.zeros(n_blocks + 1, np.int64)
    np.cumsum(totals, out=starts[1:])
    offsets += starts[:-1, None]
    local = np.empty(int(starts[-1]), np.uint16)
    _fill_blocks(ind, ptr, rows, offsets, local)
    return local, counts, starts


@numba.njit(parallel=True, cache=True, nogil=True)
def _image_sums(ind, ptr, row_value, rows_per_image, out):
    for img in numba.prange(out.shape[0]):
        for r in range(img * rows_per_image, (img + 1) * rows_per_image):
            v = row_value[r]
            for p in range(ptr[r], ptr[r + 1]):
                out[img, ind[p]] += v


def image_sums(ind, ptr, row_value, rows_per_image, n_atoms):
    """Per-image sums of CSR codes whose rows each hold one coefficient.

    Parameters
    ----------
    ind, ptr : CSR rows, image-major (``rows_per_image`` consecutive rows per image)
    row_value : ndarray of shape (n,), float64
    rows_per_image : int
    n_atoms : int

    Returns
    -------
    ndarray of shape (n // rows_per_image, n_atoms), float64
    """
    out = np.zeros(((len(ptr) - 1) // rows_per_image, n_atoms))
    with compiled_section():
        _image_sums(ind, ptr, row_value, rows_per_image, out)
    return out
