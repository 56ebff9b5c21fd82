"""Code statistics of the SMT objective: the streaming sums G = A A^T and M = A D D^T A^T.

Every statistic is a sum over images, so it streams (``partial_fit``), checkpoints as plain
arrays and all-reduces across processes exactly. Sums are kept in float64; with binary codes
every entry is an integer count, so accumulation is exact and its order does not matter
(docs/algorithm.md §5.4). :func:`smt.spectral.solve_embedding` turns them into the projection P.

The pair sums (``A^T B`` of sparse code matrices) are nearly all of a fit's statistics work. On CPU
they are counted by the compiled, cache-blocked kernel of :mod:`smt._pairs` when the codes are
binary (times an integer row weight) and numba is installed, and by scipy's sparse product
otherwise; on CUDA they are dense int8 GEMMs of blocks of code rows (exact in int32). All paths give
the same sums (``tests/test_statistics.py``).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

try:  # exact co-activation counts of binary codes, compiled and cache-blocked (the fast extra)
    from smt import _pairs
    from smt._threshold import pad_lists
except ImportError:  # numba is optional: pip install "sparse-manifold-transform[fast]"
    _pairs = pad_lists = None

CONTEXTS = ("image",)
ORDERS = (1, 2)

# Bound on the neighbour-list entries of a window context held at once (times 4).
_MAX_PAIRS = 1 << 24
# Threads for the CPU statistics product (real-valued codes): each holds its own (K, K) sparse result
# (up to 12 K^2 bytes, ~0.8 GB at K 8192), so at most 4 and no more than fit in _PRODUCT_BYTES;
# and a slice of fewer rows than this is not worth a thread.
_MAX_PRODUCT_THREADS = 4
_PRODUCT_BYTES = 1 << 30
_MIN_PRODUCT_ROWS = 4096
# The compiled counts cost one pass over the (K, K) sum whatever the rows: below this many pairs
# per entry of the sum, scipy's product is as fast.
_MIN_KERNEL_PAIRS_PER_ENTRY = 0.125
# The whole-image term subtracts s s^T for each image's code sum s: scipy's product of those sparse
# rows (one thread, plus the scattered add of its result) costs 500 to 1000 times a dense float64
# GEMM's multiply-add per pair on one core (benchmarks/RESULTS.md, "Speed", stop 36), so the dense
# GEMM runs unless the pairs are fewer than this share of its B * K^2 multiply-adds.
_SPARSE_OUTER_PAIRS_PER_ENTRY = 1 / 1024
# Dense code blocks (the CUDA path) hold at most this many (row, atom) entries; int8 products of
# coefficients within +-127 sum exactly in int32 over a block of fewer than 2**31 / 127**2 rows.
_MAX_DENSE_BLOCK = 1 << 28


def _add_pairs(target, n_atoms, ia, va, ib, vb, also=None):
    """target[a, b] += sum_n sum_{p, q} va[n, p] vb[n, q] for a = ia[n, p], b = ib[n, q] (pads are -1).

    That is ``A^T B`` for the sparse (n, K) matrices whose rows are the padded lists, the work of
    nearly all of a fit's statistics pass. On CPU, when every row's coefficients are one integer
    (binary codes, times a degree or a patch count) and numba is installed, the pairs are counted
    exactly by the compiled, cache-blocked kernel of :mod:`smt._pairs`; otherwise (real-valued
    coefficients) by one sparse matrix product (scipy's SpGEMM). On CUDA, one dense GEMM per
    block of rows (:func:`_add_dense_pairs`). Every path gives the same sums: with integer
    coefficients each is an exact integer (benchmarks/RESULTS.md, "Speed").

    ``also=(other, scale)`` adds ``scale`` times the same product to a second flat (K*K) sum.
    """
    if ia.shape[0] == 0:
        return
    targets = [(target, 1.0)] + ([also] if also is not None else [])
    if target.device.type == "cpu":
        outs = [(t.numpy().reshape(n_atoms, n_atoms), scale) for t, scale in targets]
        if not _add_pair_counts(outs, ia, va, ib, vb):
            _add_sparse_product(outs, ia, va, ib, vb)
    else:
        _add_dense_pairs(targets, n_atoms, ia, va, ib, vb)


def _add_pair_counts(outs, ia, va, ib, vb):
    """``_add_pairs`` by the compiled integer kernel; False (nothing added) when it does not apply."""
    if _pairs is None:
        return False
    count_a, count_b = (ia >= 0).sum(1), (ib >= 0).sum(1)
    pairs = int((count_a * count_b).sum())
    # Per-block counts are uint16: a row of B may list an atom many times, but not 65536 entries.
    if pairs < _MIN_KERNEL_PAIRS_PER_ENTRY * outs[0][0].size or int(count_b.max()) >= 1 << 16:
        return False
    ind_a, ptr_a, row_a, repeats = _pairs.padded_to_csr(ia.numpy(), va.numpy())
    if ia is ib:
        ind_b, ptr_b = ind_a, ptr_a
        row_b = row_a if vb is va else _row_values(ia, vb)
    else:
        ind_b, ptr_b, row_b, _ = _pairs.padded_to_csr(ib.numpy(), vb.numpy())
    weight = row_a * row_b
    # Integer row weights only (the kernel splits the rows so that no int32 tile entry overflows).
    if not np.all(np.isfinite(weight)) or np.any(weight != np.round(weight)) or np.abs(weight).max() >= 2 ** 31:
        return False
    if ia is ib and not repeats:  # symmetric: the upper triangle, mirrored
        _pairs.add_pair_counts(outs, ind_a, ptr_a, weight.astype(np.int64))
    else:
        _pairs.add_pair_counts(outs, ind_a, ptr_a, weight.astype(np.int64), ind_b, ptr_b)
    return True


def _integer_rows(idx, val):
    """(ind, ptr, row_value) of padded CPU codes for the compiled counts, or None where they do not
    apply: no numba, CUDA, a row whose coefficients differ or are not integers, a repeated atom."""
    if _pairs is None or idx.device.type != "cpu" or idx.shape[0] == 0:
        return None
    ind, ptr, row_value, repeats = _pairs.padded_to_csr(idx.numpy(), val.numpy())
    if repeats or not np.all(np.isfinite(row_value)) or np.any(row_value != np.round(row_value)):
        return None
    if np.abs(row_value).max() ** 2 >= 2 ** 31:
        return None
    return ind, ptr, row_value


def _row_values(idx, val):
    """Each row's common coefficient over its valid entries (0 for an empty row, NaN where they differ)."""
    valid = idx >= 0
    v = val.to(torch.float64)
    top = torch.where(valid, v, torch.tensor(-np.inf, dtype=torch.float64)).max(1).values
    low = torch.where(valid, v, torch.tensor(np.inf, dtype=torch.float64)).min(1).values
    out = torch.where(top == low, top, torch.tensor(np.nan, dtype=torch.float64))
    return torch.where(valid.any(1), out, torch.zeros_like(out)).numpy()


def _add_dense_pairs(targets, n_atoms, ia, va, ib, vb):
    """``_add_pairs`` as one dense GEMM ``A^T B`` per block of rows (the CUDA path; runs anywhere).

    With integer coefficients in [-127, 127] (binary codes, times a small degree) the blocks are
    int8 and their product is int32 (``torch._int_mm``): exact, and the GPU's fastest GEMM; other
    coefficients multiply in float64. Blocks are added to the float64 sum, so it is exact across
    blocks too. A block holds at most ``_MAX_DENSE_BLOCK`` entries and fewer than
    2**31 / 127**2 rows.
    """
    k = n_atoms
    small = all(bool(((v == v.round()) & (v.abs() <= 127)).all()) for v in (va, vb))
    rows = max(1, min(_MAX_DENSE_BLOCK // k, (2 ** 31 - 1) // 127 ** 2))
    for i in range(0, ia.shape[0], rows):
        a = _dense_block(ia[i:i + rows], va[i:i + rows], k, torch.int8 if small else torch.float64)
        b = _dense_block(ib[i:i + rows], vb[i:i + rows], k, a.dtype)
        product = _block_product(a, b)
        for target, scale in targets:
            target.view(k, k).add_(product, alpha=scale)


def _dense_block(idx, val, k, dtype):
    """The (n, K) dense matrix of padded sparse rows (repeated indices add up)."""
    work = torch.float32 if dtype == torch.int8 else torch.float64  # exact for int8's range
    dense = torch.zeros(idx.shape[0], k + 1, dtype=work, device=idx.device)
    dense.scatter_add_(1, idx.where(idx >= 0, k), val.to(work) * (idx >= 0))
    return dense[:, :k].to(dtype)


def _block_product(a, b):
    """``a^T b`` in float64; int8 blocks multiply exactly into int32 (padded to the shapes int8
    GEMMs need: more than 16 rows of the left factor, inner and outer sizes multiples of 8)."""
    if a.dtype != torch.int8:
        return a.T @ b
    n, k = a.shape
    n_pad, k_pad = -(-max(n, 1) // 8) * 8, max(-(-k // 8) * 8, 24)
    at = torch.zeros(k_pad, n_pad, dtype=torch.int8, device=a.device)
    bp = torch.zeros(n_pad, k_pad, dtype=torch.int8, device=a.device)
    at[:k, :n] = a.T
    bp[:n, :k] = b
    return torch._int_mm(at, bp)[:k, :k].to(torch.float64)


def _csr(idx, val, n_atoms):
    """The (n, K) CSR matrix of padded sparse rows (repeated indices in a row add up)."""
    valid = idx >= 0
    indptr = np.zeros(idx.shape[0] + 1, dtype=np.int64)
    np.cumsum(valid.sum(1).numpy(), out=indptr[1:])
    return scipy.sparse.csr_matrix(
        (val[valid].numpy().astype(np.float64, copy=False), idx[valid].numpy(), indptr),
        shape=(idx.shape[0], n_atoms))


def _add_sparse_product(outs, ia, va, ib, vb):
    """out += scale * A^T B for each (out, scale) in ``outs``, dense float64 (K, K) arrays.

    The rows are split over torch's CPU threads (scipy's sparse kernels release the GIL). The
    products are added in row order, each while the later ones are still computing, so the sum
    does not depend on the timing of the threads.
    """
    n, k = ia.shape[0], outs[0][0].shape[0]
    same = ia is ib and va is vb

    def product(rows):
        a = _csr(ia[rows], va[rows], k)
        b = a if same else _csr(ib[rows], vb[rows], k)
        return (a.T.tocsr() @ b).tocsr()

    n_parts = min(torch.get_num_threads(), _MAX_PRODUCT_THREADS, max(1, _PRODUCT_BYTES // (12 * k * k)),
                  max(1, n // _MIN_PRODUCT_ROWS))
    bounds = np.linspace(0, n, n_parts + 1).astype(int)
    parts = [slice(i, j) for i, j in zip(bounds[:-1], bounds[1:])]

    def add(c):
        rows = np.repeat(np.arange(k, dtype=np.int64) * k, np.diff(c.indptr))
        # After the product every (row, column) appears once, so a fancy-index add is exact.
        for out, scale in outs:
            out.reshape(-1)[rows + c.indices] += c.data if scale == 1 else scale * c.data

    if n_parts == 1:
        add(product(parts[0]))
        return
    with ThreadPoolExecutor(n_parts) as pool:
        for c in pool.map(product, parts):
            add(c)


def _csr_rows(ind, ptr, start, stop):
    """Rows ``start:stop`` of a CSR (ind, ptr) as a CSR of their own (views, no copy of ``ind``)."""
    return ind[ptr[start]:ptr[stop]], ptr[start:stop + 1] - ptr[start]


def _whole_image_weight(n_patches, order):
    """w(m) of a full grid of m patches: the weight of G_img in the whole-image M (order 1: m;
    order 2: m^2 / (m - 1)^2)."""
    if order == 1:
        return float(n_patches)
    return float(n_patches) ** 2 / (n_patches - 1) ** 2 if n_patches > 1 else 0.0


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
    """Streaming sums of the code statistics of the SMT objective (docs/algorithm.md §5.1-5.4).

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
    image_weight : float, default=0.0
        With a window ``context``: add this times the whole-image M (same order), so that M mixes
        a local and a global context. The whole-image Laplacian has degree m - 1 per patch
        against (2r + 1)^2 - 1 for the window (728 against 48 on CIFAR at r 3): weigh accordingly.
    view_weight : float, default=1.0
        Node weight u of every view after the first (a gray copy beside its colour image): an edge
        between patches i and j weighs u_i u_j (1 within the first view, u to the other views, u^2
        among them), and a patch's term in G weighs u_i. Then per scene
        ``M = U (G_first + u G_rest) - s_u s_u^T`` with ``U = m_first + u m_rest`` and
        ``s_u = s_first + u s_rest``. Values other than 1 need binary codes in the whole-image
        context of order 1 and the compiled kernel (CPU, numba).

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

    def __init__(self, n_atoms, context="image", order=1, device="cpu", image_weight=0.0, view_weight=1.0):
        self.n_atoms = n_atoms
        self.context = context
        self.order = order
        self.device = device
        self.image_weight = image_weight
        self.view_weight = view_weight

    def empty_like(self):
        """A ``ContextStatistics`` of the same parameters, with no sums."""
        return type(self)(self.n_atoms, self.context, self.order, self.device, self.image_weight, self.view_weight)

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

    def partial_fit_lists(self, atoms, counts, nonempty, n_views=1):
        """``partial_fit`` of binary codes given as flat lists: the same sums, without padded arrays.

        Parameters
        ----------
        atoms : ndarray of shape (nnz,), int32
            Each patch's active atoms in ascending order, patch after patch (grid order, images
            laid out as in ``partial_fit``), as :func:`smt.coding.threshold_lists` gives them.
        counts : ndarray of shape (V*B*H'*W',), int64
            Active atoms per patch (0 for a constant patch).
        nonempty : torch.Tensor of shape (V*B, H', W'), bool
        n_views : int, default=1

        Needs numba (the ``fast`` extra), as the coder that makes such lists does.
        """
        if (self.context == "image" and self.order == 1 and _pairs is not None
                and torch.device(self.device).type == "cpu"):
            ptr = np.zeros(len(counts) + 1, np.int64)
            np.cumsum(counts, out=ptr[1:])
            if nonempty.shape[0] % n_views:
                raise ValueError(f"{nonempty.shape[0]} images do not split into {n_views} views of equal count")
            if not hasattr(self, "_gram"):
                self._init()
            self._add_whole_image_counts((atoms, ptr, (counts > 0).astype(np.float64)), nonempty, n_views)
            return self
        # Other contexts and orders take the padded codes.
        idx, val = pad_lists(atoms, counts)
        shape = (*nonempty.shape, idx.shape[1])
        return self.partial_fit(idx.to(self.device).view(shape), val.to(self.device).view(shape),
                                nonempty.to(self.device), n_views)

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
        if self.context == "image" and self.order == 1:
            csr = _integer_rows(indices.reshape(-1, m), values.reshape(-1, m))
            if csr is not None:
                self._add_whole_image_counts(csr, nonempty, n_views)
                return self
        self._check_view_weight(n_views)
        flat_i, flat_v = indices.reshape(-1, m), values.reshape(-1, m)
        nodes = nonempty.reshape(-1)
        scenes = b // n_views
        node_i, node_v = flat_i[nodes], flat_v[nodes]
        # Weight of the whole-image M: 1 for the whole-image context, image_weight beside a window.
        whole = 1.0 if self.context == "image" else float(self.image_weight)
        if whole:
            # The whole-image context's pair term is w_ref G of the batch (see _add_whole_image):
            # it is added to M as G's pairs are counted.
            _add_pairs(self._gram, k, node_i, node_v, node_i, node_v,
                       also=(self._context, whole * _whole_image_weight(n_views * h * w, self.order)))
        else:
            _add_pairs(self._gram, k, node_i, node_v, node_i, node_v)
        used = node_i[node_i >= 0]
        self.usage_ += torch.bincount(used, minlength=k).to(torch.float64)
        self.n_patches_ += int(nodes.sum())
        self.n_images_ += b
        if whole:
            # Position plays no part in a whole-image context: a scene's views stacked along the
            # height are one image.
            def stack(t):
                return t.reshape(n_views, scenes, h, w, *t.shape[3:]).transpose(0, 1).reshape(
                    scenes, n_views * h, w, *t.shape[3:])
            self._add_whole_image(stack(indices), stack(values), stack(nonempty), whole)
        if self.context != "image":
            # Neighbour lists cost V (2r+1)^2 * m per patch: walk the batch in slices of scenes.
            per_scene = n_views * h * w * (n_views * (2 * self.context + 1) ** 2 - 1) * m
            step = max(1, (_MAX_PAIRS // 4) // per_scene)

            def part(t, i):
                return t.reshape(n_views, scenes, *t.shape[1:])[:, i:i + step].reshape(-1, *t.shape[1:])
            for i in range(0, scenes, step):
                self._add_window(part(indices, i), part(values, i), part(nonempty, i), n_views)
        return self

    def _add_whole_image(self, indices, values, nonempty, weight=1.0):
        # First order over the complete graph of an image: m G_img - s s^T; second order is the
        # same times m / (m - 1)^2 (docs/algorithm.md §5.3). The pair term weighs each image's G_img by
        # w(m) = m (order 1) or m^2 / (m - 1)^2: with w_ref = w(full grid) it is
        # w_ref G_batch + sum_img (w(m_img) - w_ref) G_img. partial_fit added w_ref G_batch, so
        # only images with constant patches need their pairs counted again.
        k = self.n_atoms
        b, h, w, mm = indices.shape
        m_img = nonempty.reshape(b, -1).sum(1).to(torch.float64)
        if self.order == 1:
            scale = torch.ones_like(m_img)
        else:
            scale = torch.where(m_img > 1, m_img / (m_img - 1).clamp(min=1) ** 2, torch.zeros_like(m_img))
        w_ref = _whole_image_weight(h * w, self.order)
        flat_i = indices.reshape(b, -1, mm)
        flat_v = values.reshape(b, -1, mm).to(torch.float64)
        node = nonempty.reshape(b, -1) & (m_img != h * w)[:, None]
        weighted = flat_v * (weight * (scale * m_img - w_ref))[:, None, None]
        node_i = flat_i[node]
        _add_pairs(self._context, k, node_i, weighted[node], node_i, flat_v[node])
        sums = torch.zeros(b, k + 1, dtype=torch.float64, device=indices.device)
        sums.scatter_add_(1, (flat_i.where(flat_i >= 0, k)).reshape(b, -1), flat_v.reshape(b, -1))
        self._subtract_outer(sums[:, :k] * (weight * scale).sqrt()[:, None])

    def _check_view_weight(self, n_views):
        if n_views > 1 and self.view_weight != 1:
            raise ValueError(f"view_weight={self.view_weight} needs binary codes in the whole-image context of "
                             f"order 1 and the compiled kernel (CPU, numba); got context={self.context!r}, "
                             f"order={self.order}")

    def _add_whole_image_counts(self, csr, nonempty, n_views):
        """The first-order whole-image statistics of codes whose every row holds one integer
        coefficient, all from one CSR of the batch: the same sums as the general path (and the
        views after the first weighed by ``view_weight``)."""
        ind, ptr, row_value = csr
        k = self.n_atoms
        b, h, w = nonempty.shape
        scenes, rows = b // n_views, (b // n_views) * h * w
        u = [1.0] + [float(self.view_weight)] * (n_views - 1)
        # U_ref: the weighted node count of a scene with no constant patch (w_ref for u = 1)
        w_ref = sum(u) * h * w
        weight = (row_value * row_value).astype(np.int64)
        gram, context = self._gram.numpy().reshape(k, k), self._context.numpy().reshape(k, k)
        m_view = nonempty.reshape(n_views, scenes, -1).sum(2).numpy().astype(np.int64)
        # One kernel call (one walk of the tiles) per group of views that share a weight: all the
        # rows at once when every view weighs the same. The rows are view-major, so a view's rows
        # are one contiguous block of the CSR. Scenes with constant patches: their G_img weighs
        # U_scene = sum_t u_t m_t, not U_ref (see _add_whole_image); the difference
        # sum_t u_t (m_t - h w) is added as integer row weights, one term when every view weighs
        # the same, else one per view t, times u_t.
        uniform = len(set(u)) == 1
        missing = m_view - h * w
        terms = [(u[0], missing.sum(0))] if uniform else [(u[t], missing[t]) for t in range(n_views)]
        groups = [(u[0], range(n_views))] if uniform else [(u[v], [v]) for v in range(n_views)]
        for scale, members in groups:
            first, last = members[0] * rows, (members[-1] + 1) * rows
            ind_g, ptr_g = _csr_rows(ind, ptr, first, last)
            w_g = weight[first:last]
            _pairs.add_pair_counts([(gram, scale), (context, scale * w_ref)], ind_g, ptr_g, w_g)
            for u_t, per_scene in terms:
                if np.any(per_scene):
                    per_row = np.tile(np.repeat(per_scene, h * w), len(members))
                    _pairs.add_pair_counts([(context, scale * u_t)], ind_g, ptr_g, w_g * per_row)
        self.usage_ += torch.from_numpy(np.bincount(ind, minlength=k).astype(np.float64))
        self.n_patches_ += int(nonempty.sum())
        self.n_images_ += b
        sums = _pairs.image_sums(ind, ptr, row_value, h * w, k).reshape(n_views, scenes, k)
        self._subtract_outer(torch.from_numpy(sum(u[v] * sums[v] for v in range(n_views))))

    def _subtract_outer(self, sums):
        """M -= sum_img s s^T for the rows s of ``sums`` (n, K)."""
        k = self.n_atoms
        b = sums.shape[0]
        nnz = (sums != 0).sum(1)
        if int((nnz * nnz).sum()) < _SPARSE_OUTER_PAIRS_PER_ENTRY * b * k * k:
            width = int(nnz.max())
            top = sums.abs().topk(max(width, 1), dim=1, sorted=False).indices
            vals = sums.gather(1, top)
            top = top.where(vals != 0, -1)
            _add_pairs(self._context, k, top, -vals, top, vals)
        else:
            self._context.view(k, k).addmm_(sums.T, sums, alpha=-1)

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

    @property
    def has_state(self):
        """Whether any statistics have been added (or set) yet."""
        return "_gram" in vars(self)

    def set_state(self, state, device=None):
        device = self.device if device is None else device
        self._gram = torch.as_tensor(state["gram"], device=device)
        self._context = torch.as_tensor(state["context"], device=device)
        self.usage_ = torch.as_tensor(state["usage"], device=device)
        self.n_patches_ = int(state["n_patches"])
        self.n_images_ = int(state["n_images"])
        return self
