"""The threshold coder on CPU with its compare-and-compact pass compiled (needs numba).

torch finds the atoms above the threshold in two passes over each (rows, K) similarity block,
``s > t`` and ``nonzero``, then pads every row's list to the widest: together they cost more than
the GEMM that wrote the block. Here one compiled pass compares and keeps the few indices while a
row is in cache, the lists wait in a flat array, and one more pass writes the padded result once
(benchmarks/RESULTS.md, "Speed"). The codes are identical: the same comparisons on the same float32
similarities.
"""
import numba
import numpy as np
import torch

from smt._compiled import compiled_section

_KEEP = 512  # indices kept per row by the first pass; a row with more is scanned again


@numba.njit(cache=True, nogil=True)
def _order(v, sign_magnitude):
    # bfloat16 bits read as int16 are sign-magnitude: negatives order backwards.
    if sign_magnitude and v < 0:
        return -(v + 32768)
    return v


@numba.njit(parallel=True, cache=True, nogil=True)
def _compare(s, t, argmax, first, counts, sign_magnitude):
    cap = first.shape[1]
    for i in numba.prange(s.shape[0]):
        c = 0
        for j in range(s.shape[1]):
            if s[i, j] > t:
                if c < cap:
                    first[i, c] = j
                c += 1
        if c == 0 and argmax:
            best = 0
            top = _order(s[i, 0], sign_magnitude)
            for j in range(1, s.shape[1]):
                v = _order(s[i, j], sign_magnitude)
                if v > top:
                    best, top = j, v
            first[i, 0] = best
            c = 1
        counts[i] = c


@numba.njit(parallel=True, cache=True, nogil=True)
def _gather(s, t, first, counts, starts, flat):
    cap = first.shape[1]
    for i in numba.prange(s.shape[0]):
        c, o = counts[i], starts[i]
        if c <= cap:
            flat[o:o + c] = first[i, :c]
        else:
            c = 0
            for j in range(s.shape[1]):
                if s[i, j] > t:
                    flat[o + c] = j
                    c += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _pad(flat, counts, starts, indices, values):
    for i in numba.prange(indices.shape[0]):
        c, o = counts[i], starts[i]
        indices[i, :c] = flat[o:o + c]
        indices[i, c:] = -1
        values[i, :c] = 1.0
        values[i, c:] = 0.0


def _bf16_threshold(threshold):
    """The int16 b with ``float32(bits b as bfloat16) > float32(t)  <=>  b > b_t`` for t > 0:
    a bfloat16 is the high half of a float32, and positive floats order as their bit patterns."""
    if not threshold > 0:
        raise ValueError("the bfloat16 compare needs a positive threshold")
    return np.int16(int(np.array(threshold, np.float32).view(np.int32)) >> 16)


def threshold_code(blocks, n, threshold, argmax_if_empty, padded=True):
    """Binary threshold codes as padded lists (see :func:`smt.coding.sparse_code`), or as flat lists.

    Parameters
    ----------
    blocks : iterable of torch.Tensor of shape (rows, K), on the CPU
        The similarities of consecutive rows, block by block (float32, float64, or bfloat16 with a
        positive threshold); a block may be overwritten once the next is asked for.
    n : int
        Rows in all blocks together.
    threshold : float
        Compared in float32 (float64 for float64 blocks): a bfloat16 similarity s is active when
        float32(s) > float32(threshold).
    argmax_if_empty : bool
        A row with no similarity above the threshold gets its best atom instead of none.
    padded : bool, default=True
        False: return the flat lists and their counts (CSR rows), skipping the padded arrays,
        which are about 3.5x the lists at K 8192 (the widest code against the mean).

    Returns
    -------
    indices : torch.Tensor of shape (n, m), int64
        Active atoms in ascending order, -1 pads; ``m`` is the largest count (at least 1).
    values : torch.Tensor of shape (n, m), float32
        1 at active atoms, 0 at pads.

    or, with ``padded=False``:

    atoms : ndarray of shape (sum(counts),), int32
        Every row's active atoms in ascending order, row after row.
    counts : ndarray of shape (n,), int64
    """
    counts = np.zeros(n, np.int64)
    lists, i, first = [], 0, None
    with compiled_section():
        for block in blocks:
            bf16 = block.dtype == torch.bfloat16
            s = block.view(torch.int16).numpy() if bf16 else block.numpy()
            if first is None:  # the first block is the tallest
                first = np.empty((s.shape[0], min(s.shape[1], _KEEP)), np.int32)
                t = _bf16_threshold(threshold) if bf16 else s.dtype.type(threshold)
            m = s.shape[0]
            _compare(s, t, argmax_if_empty, first[:m], counts[i:i + m], bf16)
            flat = np.empty(int(counts[i:i + m].sum()), np.int32)
            _gather(s, t, first[:m], counts[i:i + m], np.cumsum(counts[i:i + m]) - counts[i:i + m], flat)
            lists.append(flat)
            i += m
        flat = np.concatenate(lists) if lists else np.empty(0, np.int32)
    return pad_lists(flat, counts) if padded else (flat, counts)


def pad_lists(atoms, counts):
    """Flat binary codes as padded lists.

    Parameters
    ----------
    atoms : ndarray of shape (sum(counts),), int
        Every row's atoms, row after row.
    counts : ndarray of shape (n,), int64

    Returns
    -------
    indices : torch.Tensor of shape (n, m), int64
        The atoms, -1 pads; ``m`` is the largest count (at least 1).
    values : torch.Tensor of shape (n, m), float32
        1 at atoms, 0 at pads.
    """
    n = len(counts)
    width = max(int(counts.max()) if n else 0, 1)
    # torch's allocator, not numpy's: numpy asks for huge pages, and their first faults can stall
    # for seconds while the kernel compacts memory.
    indices = torch.empty((n, width), dtype=torch.int64)
    values = torch.empty((n, width), dtype=torch.float32)
    with compiled_section():
        _pad(atoms, counts, np.cumsum(counts) - counts, indices.numpy(), values.numpy())
    return indices, values
