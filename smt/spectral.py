"""Spectral embedding: the context statistics of the codes, and the generalized eigenproblem.

Every statistic is a sum over images, so it streams (``partial_fit``), checkpoints as plain
arrays and all-reduces across processes exactly. Sums are kept in float64; with binary codes
every entry is an integer count, so accumulation is exact and its order does not matter.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.linalg
import scipy.sparse
import torch
import torch.nn.functional as F

CONTEXTS = ("image",)
ORDERS = (1, 2)

# Bound on the number of (atom, atom) pairs scattered at once: 2**24 pairs = 128 MiB of keys.
_MAX_PAIRS = 1 << 24
# scipy's subset solver (gvx) is the fastest on CPU up to here (8192 atoms: ~20 s on 2 cores), but
# the OpenBLAS that scipy wheels bundle segfaults on it at 16384 atoms (benchmarks/RESULTS.md):
# larger problems go through torch's LAPACK (Cholesky + full eigh), as on CUDA.
_SCIPY_MAX_ATOMS = 8192
# Threads for the CPU statistics product: each holds its own (K, K) sparse result (up to ~0.8 GB at
# K 8192), so few; and a slice of fewer rows than this is not worth a thread.
_MAX_PRODUCT_THREADS = 4
_MIN_PRODUCT_ROWS = 4096


def _add_pairs(target, n_atoms, ia, va, ib, vb):
    """target[a, b] += sum_n sum_{p, q} va[n, p] vb[n, q] for a = ia[n, p], b = ib[n, q] (pads are -1).

    That is ``A^T B`` for the sparse (n, K) matrices whose rows are the padded lists. On CPU it is
    one sparse matrix product (scipy's SpGEMM): about 10x faster than scattering every pair, which
    is what the statistics pass of a fit spends nearly all its time on (benchmarks/RESULTS.md,
    "Speed"). On CUDA the pairs are scattered with ``index_add_``.
    """
    if ia.shape[0] == 0:
        return
    if target.device.type == "cpu":
        _add_sparse_product(target.numpy().reshape(n_atoms, n_atoms), ia, va, ib, vb)
    else:
        _scatter_pairs(target, n_atoms, ia, va, ib, vb)


def _csr(idx, val, n_atoms):
    """The (n, K) CSR matrix of padded sparse rows (repeated indices in a row add up)."""
    valid = idx >= 0
    indptr = np.zeros(idx.shape[0] + 1, dtype=np.int64)
    np.cumsum(valid.sum(1).numpy(), out=indptr[1:])
    return scipy.sparse.csr_matrix(
        (val[valid].numpy().astype(np.float64, copy=False), idx[valid].numpy(), indptr),
        shape=(idx.shape[0], n_atoms))


def _add_sparse_product(out, ia, va, ib, vb):
    """out += A^T B for the sparse rows of ``_add_pairs``; out is a dense float64 (K, K) array.

    The rows are split over torch's CPU threads (scipy's sparse kernels release the GIL). The
    products are added in row order, each while the later ones are still computing, so the sum
    does not depend on the timing of the threads.
    """
    n, k = ia.shape[0], out.shape[0]
    same = ia is ib and va is vb

    def product(rows):
        a = _csr(ia[rows], va[rows], k)
        b = a if same else _csr(ib[rows], vb[rows], k)
        return (a.T.tocsr() @ b).tocsr()

    n_parts = min(torch.get_num_threads(), _MAX_PRODUCT_THREADS, max(1, n // _MIN_PRODUCT_ROWS))
    bounds = np.linspace(0, n, n_parts + 1).astype(int)
    parts = [slice(i, j) for i, j in zip(bounds[:-1], bounds[1:])]
    flat = out.reshape(-1)

    def add(c):
        rows = np.repeat(np.arange(k, dtype=np.int64) * k, np.diff(c.indptr))
        # After the product every (row, column) appears once, so a fancy-index add is exact.
        flat[rows + c.indices] += c.data

    if n_parts == 1:
        add(product(parts[0]))
        return
    with ThreadPoolExecutor(n_parts) as pool:
        for c in pool.map(product, parts):
            add(c)


def _scatter_pairs(target, n_atoms, ia, va, ib, vb):
    """``_add_pairs`` by scattering every pair (the CUDA path).

    When padding dominates, rows are grouped by their number of valid entries (rounded up to a
    power of two) so the work follows the real pair count, not the widest row of the batch:
    threshold codes vary from a few to hundreds of atoms per patch.
    """
    count_a, count_b = (ia >= 0).sum(1), (ib >= 0).sum(1)
    if 2 * int((count_a * count_b).sum()) >= ia.shape[0] * ia.shape[1] * ib.shape[1]:
        _add_padded_pairs(target, n_atoms, ia, va, ib, vb)  # little padding: grouping costs more than it saves
        return
    ia, va, wa = _compact(ia, va, count_a)
    ib, vb, wb = _compact(ib, vb, count_b)
    group = wa * (ib.shape[1] + 1) + wb
    for g in torch.unique(group[(wa > 0) & (wb > 0)]).tolist():
        rows = torch.nonzero(group == g)[:, 0]
        a_w, b_w = divmod(g, ib.shape[1] + 1)
        _add_padded_pairs(target, n_atoms, ia[rows, :a_w], va[rows, :a_w], ib[rows, :b_w], vb[rows, :b_w])


def _compact(idx, val, count):
    """Move each row's valid entries (idx >= 0; ``count`` per row) first; also return the row widths
    rounded up to a power of two (0 for an empty row)."""
    valid = idx >= 0
    if not bool(valid.all()):
        order = (~valid).to(torch.uint8).argsort(dim=1, stable=True)
        idx, val = idx.gather(1, order), val.gather(1, order)
    width = torch.where(count > 0, 2 ** torch.ceil(torch.log2(count.clamp(min=1).double())).long(), 0)
    return idx, val, width.clamp(max=idx.shape[1])


def _add_padded_pairs(target, n_atoms, ia, va, ib, vb):
    rows = max(1, _MAX_PAIRS // (ia.shape[1] * ib.shape[1]))
    for i in range(0, ia.shape[0], rows):
        a, b = ia[i:i + rows], ib[i:i + rows]
        valid = (a >= 0)[:, :, None] & (b >= 0)[:, None, :]
        key = a[:, :, None] * n_atoms + b[:, None, :]
        weight = va[i:i + rows, :, None].double() * vb[i:i + rows, None, :].double()
        target.index_add_(0, key[valid], weight[valid])


def _neighbour_codes(indices, values, nonempty, radius, n_views=1):
    """Codes of every patch's neighbours within ``radius`` (Chebyshev distance) on the grid.

    indices, values : (V*B, H', W', m); nonempty : (V*B, H', W') bool, laid out view-major: image
    ``v * B + s`` is view v of scene s. A patch's neighbours are the patches within ``radius`` in
    every view of its scene, itself excluded (so the same position in another view is one).
    Returns neighbour indices and values of shape (V*B, H', W', V (2r+1)^2 - 1, m) and the degree
    (number of non-empty neighbours) of shape (V*B, H', W').
    """
    b, h, w, m = indices.shape
    r = radius
    pad_i = F.pad(indices.permute(0, 3, 1, 2), (r, r, r, r), value=-1)
    pad_v = F.pad(values.permute(0, 3, 1, 2), (r, r, r, r), value=0.0)
    pad_n = F.pad(nonempty[:, None].to(torch.float32), (r, r, r, r))[:, 0]
    offsets = [(dy, dx) for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
    centre = offsets.index((r, r))
    # (B_all, m, H', W', n_off) -> (V, B, H', W', n_off, m)
    n_idx = torch.stack([pad_i[:, :, dy:dy + h, dx:dx + w] for dy, dx in offsets], dim=-1)
    n_val = torch.stack([pad_v[:, :, dy:dy + h, dx:dx + w] for dy, dx in offsets], dim=-1)
    n_node = torch.stack([pad_n[:, dy:dy + h, dx:dx + w] for dy, dx in offsets], dim=-1)
    n_idx = n_idx.permute(0, 2, 3, 4, 1).reshape(n_views, b // n_views, h, w, len(offsets), m)
    n_val = n_val.permute(0, 2, 3, 4, 1).reshape(n_views, b // n_views, h, w, len(offsets), m)
    n_node = n_node.reshape(n_views, b // n_views, h, w, len(offsets))
    others = [i for i in range(len(offsets)) if i != centre]
    out_i, out_v, out_d = [], [], []
    for v in range(n_views):
        parts = [(u, slice(None) if u != v else others) for u in range(n_views)]
        out_i.append(torch.cat([n_idx[u][..., sel, :] for u, sel in parts], dim=-2))
        out_v.append(torch.cat([n_val[u][..., sel, :] for u, sel in parts], dim=-2))
        out_d.append(sum(n_node[u][..., sel].sum(-1) for u, sel in parts))
    return torch.cat(out_i), torch.cat(out_v), torch.cat(out_d)


class ContextStatistics:
    """Streaming sums of the code statistics of the SMT objective (spec 5.1-5.4).

    ``G = sum_i a_i a_i^T`` over non-empty patches, and ``M = A D D^T A^T`` for the context
    difference operator D: first order (graph Laplacian of the context graph) or second order
    (each patch against the mean of its neighbours).

    Parameters
    ----------
    n_atoms : int
    context : "image" or int
        ``"image"``: all patches of an image are neighbours; int r: patches at Chebyshev distance
        <= r on the patch grid.
    order : {1, 2}
    device : torch.device

    Attributes
    ----------
    gram_ : torch.Tensor of shape (K, K), float64
        G.
    context_ : torch.Tensor of shape (K, K), float64
        M.
    usage_ : torch.Tensor of shape (K,), float64
        Number of non-empty patches whose code uses each atom.
    n_patches_ : int
        Non-empty patches seen (N_p).
    n_images_ : int
    """

    def __init__(self, n_atoms, context="image", order=1, device="cpu"):
        self.n_atoms = n_atoms
        self.context = context
        self.order = order
        self.device = device

    def _init(self):
        k = self.n_atoms
        self._gram = torch.zeros(k * k, dtype=torch.float64, device=self.device)
        self._context = torch.zeros(k * k, dtype=torch.float64, device=self.device)
        self.usage_ = torch.zeros(k, dtype=torch.float64, device=self.device)
        self.n_patches_ = 0
        self.n_images_ = 0

    @property
    def gram_(self):
        return self._gram.view(self.n_atoms, self.n_atoms)

    @property
    def context_(self):
        return self._context.view(self.n_atoms, self.n_atoms)

    def partial_fit(self, indices, values, nonempty, n_views=1):
        """Add the statistics of a batch of images.

        Parameters
        ----------
        indices : torch.Tensor of shape (V*B, H', W', m), int64
            Sparse codes on the patch grid (-1 pads).
        values : torch.Tensor of shape (V*B, H', W', m)
        nonempty : torch.Tensor of shape (V*B, H', W'), bool
            Graph nodes (non-constant patches).
        n_views : int, default=1
            Views per scene, laid out view-major (image ``v * B + s`` is view v of scene s), e.g. an
            image and its gray copy. The views of a scene form one context: a patch's neighbours
            are the patches near it in every view, so the objective pulls the views together.
        """
        if self.order not in ORDERS:
            raise ValueError(f"order must be 1 or 2, got {self.order!r}")
        if not hasattr(self, "_gram"):
            self._init()
        k = self.n_atoms
        b, h, w, m = indices.shape
        if b % n_views:
            raise ValueError(f"{b} images do not split into {n_views} views of equal count")
        flat_i, flat_v = indices.reshape(-1, m), values.reshape(-1, m)
        nodes = nonempty.reshape(-1)
        # The whole-image context reuses this batch's G (see _add_whole_image): keep it apart.
        batch_gram = torch.zeros_like(self._gram) if self.context == "image" else self._gram
        node_i, node_v = flat_i[nodes], flat_v[nodes]
        _add_pairs(batch_gram, k, node_i, node_v, node_i, node_v)
        used = node_i[node_i >= 0]
        self.usage_ += torch.bincount(used, minlength=k).to(torch.float64)
        self.n_patches_ += int(nodes.sum())
        self.n_images_ += b
        scenes = b // n_views
        if self.context == "image":
            # Position plays no part in a whole-image context: a scene's views stacked along the
            # height are one image.
            def stack(t):
                return t.reshape(n_views, scenes, h, w, *t.shape[3:]).transpose(0, 1).reshape(
                    scenes, n_views * h, w, *t.shape[3:])
            self._gram += batch_gram
            self._add_whole_image(stack(indices), stack(values), stack(nonempty), batch_gram)
        else:
            # Neighbour lists cost V (2r+1)^2 * m per patch: walk the batch in slices of scenes.
            per_scene = n_views * h * w * (n_views * (2 * self.context + 1) ** 2 - 1) * m
            step = max(1, (_MAX_PAIRS // 4) // per_scene)

            def part(t, i):
                return t.reshape(n_views, scenes, *t.shape[1:])[:, i:i + step].reshape(-1, *t.shape[1:])
            for i in range(0, scenes, step):
                self._add_window(part(indices, i), part(values, i), part(nonempty, i), n_views)
        return self

    def _add_whole_image(self, indices, values, nonempty, batch_gram):
        # First order over the complete graph of an image: m G_img - s s^T; second order is the
        # same times m / (m - 1)^2 (spec 5.3). The pair term weighs each image's G_img by
        # w(m) = m (order 1) or m^2 / (m - 1)^2: with w_ref = w(full grid) it is
        # w_ref G_batch + sum_img (w(m_img) - w_ref) G_img, so only images with constant patches
        # need their pairs scattered again; the statistics pass does about half the work.
        k = self.n_atoms
        b, h, w, mm = indices.shape
        m_img = nonempty.reshape(b, -1).sum(1).to(torch.float64)
        if self.order == 1:
            scale = torch.ones_like(m_img)
            w_ref = float(h * w)
        else:
            scale = torch.where(m_img > 1, m_img / (m_img - 1).clamp(min=1) ** 2, torch.zeros_like(m_img))
            w_ref = float(h * w) ** 2 / (h * w - 1) ** 2 if h * w > 1 else 0.0
        self._context += w_ref * batch_gram
        flat_i = indices.reshape(b, -1, mm)
        flat_v = values.reshape(b, -1, mm).to(torch.float64)
        node = nonempty.reshape(b, -1) & (m_img != h * w)[:, None]
        weighted = flat_v * (scale * m_img - w_ref)[:, None, None]
        _add_pairs(self._context, k, flat_i[node], weighted[node], flat_i[node], flat_v[node])
        sums = torch.zeros(b, k + 1, dtype=torch.float64, device=indices.device)
        sums.scatter_add_(1, (flat_i.where(flat_i >= 0, k)).reshape(b, -1), flat_v.reshape(b, -1))
        sums = sums[:, :k] * scale.sqrt()[:, None]
        nnz = (sums != 0).sum(1)
        if int((nnz * nnz).sum()) * 16 < b * k * k:  # sparse outer products beat the dense GEMM
            width = int(nnz.max())
            top = sums.abs().topk(max(width, 1), dim=1, sorted=False).indices
            vals = sums.gather(1, top)
            top = top.where(vals != 0, -1)
            _add_pairs(self._context, k, top, -vals, top, vals)
        else:
            self._context -= (sums.T @ sums).reshape(-1)

    def _add_window(self, indices, values, nonempty, n_views):
        k = self.n_atoms
        n_idx, n_val, degree = _neighbour_codes(indices, values, nonempty, self.context, n_views)
        node = nonempty & (degree > 0)
        ai, av = indices[node], values[node].to(torch.float64)
        ni, nv = n_idx[node].flatten(1), n_val[node].flatten(1).to(torch.float64)
        deg = degree[node].to(torch.float64)[:, None]
        if self.order == 1:
            # Laplacian: sum_i deg_i a_i a_i^T - sum_i a_i nu_i^T
            _add_pairs(self._context, k, ai, av * deg, ai, av)
            _add_pairs(self._context, k, ai, -av, ni, nv)
        else:
            # r_i = a_i - nu_i / deg_i, and M = sum_i r_i r_i^T
            ri = torch.cat([ai, ni], dim=1)
            rv = torch.cat([av, -nv / deg], dim=1)
            _add_pairs(self._context, k, ri, rv, ri, rv)

    def get_state(self):
        return {"gram": self._gram.cpu().numpy(), "context": self._context.cpu().numpy(),
                "usage": self.usage_.cpu().numpy(),
                "n_patches": np.int64(self.n_patches_), "n_images": np.int64(self.n_images_)}

    def set_state(self, state):
        self._gram = torch.as_tensor(state["gram"], device=self.device)
        self._context = torch.as_tensor(state["context"], device=self.device)
        self.usage_ = torch.as_tensor(state["usage"], device=self.device)
        self.n_patches_ = int(state["n_patches"])
        self.n_images_ = int(state["n_images"])
        return self


def solve_embedding(gram, context, n_patches, n_components, n_skip=1, device="cpu"):
    """Solve ``M p = lambda V_eps p`` for the slowest directions (spec 5.5).

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
    v = gram[used][:, used] / n_patches
    mm = context[used][:, used] / n_patches
    mm = (mm + mm.T) / 2
    v = (v + v.T) / 2
    v += torch.eye(k_used, dtype=torch.float64, device=v.device) * (1e-6 * torch.trace(v) / k_used)
    device = torch.device(device)
    if device.type == "cuda" or k_used > _SCIPY_MAX_ATOMS:
        v, mm = v.to(device), mm.to(device)
        chol = torch.linalg.cholesky(v)
        c = torch.linalg.solve_triangular(chol, mm, upper=False)
        c = torch.linalg.solve_triangular(chol, c.T, upper=False)
        evals, u = torch.linalg.eigh((c + c.T) / 2)
        evals, u = evals[:n_total], u[:, :n_total]
        vecs = torch.linalg.solve_triangular(chol.T, u, upper=True)
        evals, vecs = evals.cpu().numpy(), vecs.cpu().numpy()
    else:
        mm_np, v_np = mm.numpy(), v.numpy()
        del mm, v
        evals, vecs = scipy.linalg.eigh(mm_np, v_np, subset_by_index=[0, n_total - 1], driver="gvx",
                                        overwrite_a=True, overwrite_b=True, check_finite=False)
    full = np.zeros((n_total, k))
    full[:, used.cpu().numpy()] = _orient(vecs).T
    return full[n_skip:], evals[n_skip:], full[:n_skip]


def _orient(vecs):
    # Sign convention: the largest-magnitude entry of every direction (column) is positive.
    pivot = np.abs(vecs).argmax(axis=0)
    return vecs * np.sign(vecs[pivot, np.arange(vecs.shape[1])])


def solve_sparse_embedding(counts, upper, n_components, n_skip=1, random_state=None):
    """Solve ``(Deg - C) p = lambda diag(f) p`` for the slowest directions, sparse (spec 8.5).

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
    # largest of c I - Q (spec 8.5): no explicit shift is needed.
    evals, u = scipy.sparse.linalg.eigsh(operator, k=n_total, which="SA", v0=v0)
    order = np.argsort(evals)
    evals, u = evals[order], u[:, order]
    vecs = _orient(u * (np.sqrt(f.sum()) / np.sqrt(f))[:, None])
    return vecs[:, n_skip:].T, evals[n_skip:], vecs[:, :n_skip].T
