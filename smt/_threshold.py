"""The threshold coder's compare-and-compact pass as one compiled loop (needs numba).

torch on CPU finds the atoms above the threshold in two passes over the (rows, K) similarity block,
``s > t`` and ``nonzero``, plus the padding of the lists: together they cost more than the GEMM that
wrote the block. One pass that compares and writes the few indices while a row is in cache is 2-3x
cheaper (benchmarks/RESULTS.md, "Speed"). The result is identical: the same comparisons on the same
float32 similarities.
"""
import threading

import numba
import numpy as np
import torch

# One launch at a time: numba's fallback thread pool (workqueue) must not be entered concurrently.
_lock = threading.Lock()


@numba.njit(parallel=True, cache=True, nogil=True)
def _compare(s, t, argmax, first, counts):
    # Each row keeps its first ``first.shape[1]`` indices; ``counts`` has the full count.
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
            for j in range(1, s.shape[1]):
                if s[i, j] > s[i, best]:
                    best = j
            first[i, 0] = best
            c = 1
        counts[i] = c


@numba.njit(parallel=True, cache=True, nogil=True)
def _pad(s, t, first, counts, out):
    cap = first.shape[1]
    for i in numba.prange(s.shape[0]):
        c = counts[i]
        if c <= cap:
            out[i, :c] = first[i, :c]
        else:  # a row with more active atoms than kept: scan it again
            c = 0
            for j in range(s.shape[1]):
                if s[i, j] > t:
                    out[i, c] = j
                    c += 1
        out[i, c:] = -1


def threshold_indices(s, threshold, argmax_if_empty=False):
    """Indices of the entries above ``threshold`` in each row of ``s``, in ascending order.

    Parameters
    ----------
    s : torch.Tensor of shape (n, K), on the CPU
        Similarities.
    threshold : float
    argmax_if_empty : bool
        A row with no entry above the threshold gets its largest entry instead of none.

    Returns
    -------
    torch.Tensor of shape (n, m), int64
        ``m`` is the largest count of a row (at least 1); -1 pads.
    """
    a = s.detach().contiguous().numpy()
    t = a.dtype.type(threshold)
    first = np.empty((a.shape[0], min(a.shape[1], 128)), np.int32)
    counts = np.empty(a.shape[0], np.int64)
    with _lock:
        # torch.set_num_threads governs this pass too.
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        _compare(a, t, argmax_if_empty, first, counts)
        out = np.empty((a.shape[0], max(int(counts.max()) if len(counts) else 0, 1)), np.int64)
        _pad(a, t, first, counts, out)
    return torch.from_numpy(out)
