"""Dot products of chosen (query, reference) row pairs on CPU, compiled (needs numba).

The bf16 kNN screen (smt/knn.py) leaves a few candidate references per query and chunk whose
float32 similarity it must recompute. A GEMM over the union of the candidates does 30-50x the
needed work, and torch's gathers copy each pair's two rows first; here each pair reads its rows
in place, pairs in parallel. Sums are taken in float64, so a result is within one float32 rounding
of the exact dot product of the float32 rows.
"""
import numba
import numpy as np
import torch

from smt._compiled import compiled_section


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _dots(a, b, rows, cols, out):
    for p in numba.prange(rows.shape[0]):
        x = a[rows[p]]
        y = b[cols[p]]
        acc = 0.0
        for d in range(x.shape[0]):
            acc += np.float64(x[d]) * np.float64(y[d])
        out[p] = acc


def pair_dots(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[p] = a[rows[p]] . b[cols[p]]``.

    Parameters
    ----------
    a : torch.Tensor, float32, shape (n_a, d), C-contiguous, on CPU
    b : torch.Tensor, float32, shape (n_b, d), C-contiguous, on CPU
    rows, cols : torch.Tensor, int64, shape (n_pairs,)

    Returns
    -------
    torch.Tensor, float32, shape (n_pairs,)
    """
    out = np.empty(rows.shape[0], dtype=np.float64)
    with compiled_section():
        _dots(a.contiguous().numpy(), b.contiguous().numpy(), rows.numpy(), cols.numpy(), out)
    return torch.from_numpy(out.astype(np.float32))
