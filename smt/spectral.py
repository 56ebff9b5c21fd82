"""Spectral embedding: the generalized eigenproblem ``M p = lambda V p`` of the code statistics.

The statistics themselves (:class:`smt.statistics.ContextStatistics`) are streamed sums; this
module solves for the slowest directions, densely for images (docs/algorithm.md §5.5) and sparsely
for words (§8.5).
"""
import numpy as np
import scipy.linalg
import torch

# scipy's subset solver (gvx) is the fastest on CPU up to here (8192 atoms: ~20 s on 2 cores), but
# the OpenBLAS that scipy wheels bundle segfaults on it at 16384 atoms (benchmarks/RESULTS.md):
# larger problems go through torch's LAPACK (Cholesky + full eigh), as on CUDA.
_SCIPY_MAX_ATOMS = 8192


def solve_embedding(gram, context, n_patches, n_components, n_skip=1, device="cpu"):
    """Solve ``M p = lambda V_eps p`` for the slowest directions (docs/algorithm.md §5.5).

    Parameters
    ----------
    gram, context : array-like of shape (K, K)
        G and M as accumulated (unnormalised sums).
    n_patches : int
        N_p; V = G / N_p and M / N_p.
    n_components : int
        d, the number of kept directions.
    n_skip : int
        The slowest directions dropped before the d kept ones.
    device : torch.device
        CUDA: Cholesky + ``torch.linalg.eigh`` in float64. CPU: ``scipy.linalg.eigh`` with the subset
        driver ``gvx`` up to 8192 used atoms, the torch path above that.

    Returns
    -------
    components : ndarray of shape (d, K)
        P, with ``P V_eps P^T = I``; columns of atoms never used are 0.
    eigenvalues : ndarray of shape (d,)
        The slowness ``p^T M p`` of each kept direction, ascending.
    skipped : ndarray of shape (n_skip, K)
    """
    gram = torch.as_tensor(gram, dtype=torch.float64)
    context = torch.as_tensor(context, dtype=torch.float64)
    k = gram.shape[0]
    used = torch.nonzero(torch.diagonal(gram) > 0)[:, 0]
    k_used = len(used)
    n_total = n_skip + n_components
    if n_total > k_used:
        raise ValueError(
            f"n_skip + n_components = {n_total} exceeds the {k_used} atoms the training codes use; "
            f"lower n_components or fit on more images")
    # In place after one copy each: at K 8192 every (K, K) temporary is 512 MiB.
    v = gram[used][:, used] / n_patches if k_used < k else torch.div(gram, n_patches)
    mm = context[used][:, used] if k_used < k else context.clone()
    mm /= n_patches
    _symmetrize_(mm)
    _symmetrize_(v)
    v.diagonal().add_(1e-6 * torch.trace(v) / k_used)
    device = torch.device(device)
    if device.type == "cuda" or k_used > _SCIPY_MAX_ATOMS:
        # Every (K, K) temporary is dropped as soon as it is spent: beside G and M the solve then
        # holds the factor, c and eigh's output and workspace (about 6 K^2 measured, against 8 when
        # all were kept; at K 16384 each K^2 is 2 GiB).
        chol = torch.linalg.cholesky(v.to(device))
        del v
        c = torch.linalg.solve_triangular(chol, mm.to(device), upper=False)
        del mm
        c = torch.linalg.solve_triangular(chol, c.T, upper=False)
        _symmetrize_(c)
        evals, u = torch.linalg.eigh(c)
        del c
        evals, u = evals[:n_total], u[:, :n_total]
        vecs = torch.linalg.solve_triangular(chol.T, u, upper=True)
        evals, vecs = evals.cpu().numpy(), vecs.cpu().numpy()
    else:
        # Symmetric, so the transposes are the same matrices, in the Fortran order LAPACK takes without a copy.
        mm_np, v_np = mm.numpy().T, v.numpy().T
        del mm, v
        evals, vecs = scipy.linalg.eigh(mm_np, v_np, subset_by_index=[0, n_total - 1], driver="gvx",
                                        overwrite_a=True, overwrite_b=True, check_finite=False)
    full = np.zeros((n_total, k))
    full[:, used.cpu().numpy()] = _orient(vecs).T
    return full[n_skip:], evals[n_skip:], full[:n_skip]


def solve_bytes(n_atoms, device="cpu"):
    """Host memory :func:`solve_embedding` holds beside G and M at its peak, in bytes.

    Measured in (K, K) float64 arrays (``benchmarks/RESULTS.md``, "Stop 21"): scipy's subset
    solver about 3 (V, M and LAPACK's copies), the torch path about 6 (Cholesky factor, C, and
    ``eigh``'s output and its divide-and-conquer workspace of 2 K^2). On CUDA the host holds only
    V and M before they move.
    """
    device = torch.device(device)
    copies = 2 if device.type == "cuda" else 3 if n_atoms <= _SCIPY_MAX_ATOMS else 6
    return copies * 8 * n_atoms ** 2


def _symmetrize_(a, block=1024):
    """``a = (a + a^T) / 2`` in place, block by block (the same arithmetic as the whole-matrix form)."""
    n = a.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            t = (a[i:i + block, j:j + block] + a[j:j + block, i:i + block].T) / 2
            a[i:i + block, j:j + block] = t
            a[j:j + block, i:i + block] = t.T


def _orient(vecs):
    # Sign convention: the largest-magnitude entry of every direction (column) is positive.
    pivot = np.abs(vecs).argmax(axis=0)
    return vecs * np.sign(vecs[pivot, np.arange(vecs.shape[1])])


def solve_sparse_embedding(counts, upper, n_components, n_skip=1, random_state=None):
    """Solve ``(Deg - C) p = lambda diag(f) p`` for the slowest directions, sparse (docs/algorithm.md §8.5).

    The one-hot codes of words make G = diag(f) and M = Deg - C, with C sparse: a dense solve does
    not fit at V = 50 000. The problem is turned into the standard one for
    ``Q = F^{-1/2} (Deg - C) F^{-1/2}`` (positive semi-definite), whose smallest eigenpairs ARPACK
    finds by Lanczos; ``p = F^{-1/2} u``. Q is applied as an operator, from C's upper triangle.

    Parameters
    ----------
    counts : array-like of shape (V,)
        f, positive counts (G = diag(f)).
    upper : scipy sparse array of shape (V, V)
        Upper triangle (with the diagonal) U of the symmetric, non-negative co-occurrence weights
        ``C = U + U.T`` (as :meth:`smt.cooccurrence.WindowCooccurrence.restrict` returns it).
    n_components : int
        d, the number of kept directions.
    n_skip : int
        The slowest directions dropped first (1 drops the constant vector, whose cost is exactly 0).
    random_state : int, RandomState or None
        Seeds ARPACK's start vector, so the result is deterministic.

    Returns
    -------
    components : ndarray of shape (d, V)
        P, scaled like :func:`solve_embedding`: ``P (diag(f) / N) P^T = I`` with ``N = sum(f)``.
    eigenvalues : ndarray of shape (d,)
        Ascending.
    skipped : ndarray of shape (n_skip, V)
    """
    import scipy.sparse
    import scipy.sparse.linalg
    from sklearn.utils import check_random_state

    f = np.asarray(counts, dtype=np.float64)
    u_csr = scipy.sparse.csr_array(upper, dtype=np.float64)
    u_csc = u_csr.T  # a CSC view: the transpose costs no copy
    n_total = n_skip + n_components
    if n_total >= len(f):
        raise ValueError(f"n_skip + n_components = {n_total} must be below the {len(f)} words of the problem")
    s = 1 / np.sqrt(f)
    degree = np.asarray(u_csr.sum(axis=1)).ravel() + np.asarray(u_csr.sum(axis=0)).ravel()

    def q(x):
        x = np.asarray(x).reshape(-1)
        y = s * x
        return degree * s * y - s * (u_csr @ y + u_csc @ y)

    operator = scipy.sparse.linalg.LinearOperator((len(f), len(f)), matvec=q, dtype=np.float64)
    v0 = check_random_state(random_state).uniform(-1, 1, len(f))
    # Krylov spaces are shift-invariant, so the smallest eigenvalues of Q come as fast as the
    # largest of c I - Q (docs/algorithm.md §8.5): no explicit shift is needed.
    evals, u = scipy.sparse.linalg.eigsh(operator, k=n_total, which="SA", v0=v0)
    order = np.argsort(evals)
    evals, u = evals[order], u[:, order]
    vecs = _orient(u * (np.sqrt(f.sum()) / np.sqrt(f))[:, None])
    return vecs[:, n_skip:].T, evals[n_skip:], vecs[:, :n_skip].T
