"""Each stage on its own, against small cases checked by hand or by brute force."""
import numpy as np
import pytest
import scipy.linalg
import torch

from smt.coding import sparse_code
from smt.dictionary import OnlineDictionary, incoherent_atoms
from smt._norm import l2_normalize
from smt.patches import extract_patches, patch_grid_shape
from smt.pooling import pool_embeddings, pool_window
from smt.spectral import solve_embedding
from smt.statistics import ContextStatistics
from smt.whitening import Whitening


# ----------------------------------------------------------------- patches
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (3, 3, 32, 32), (1, 1, 9, 13)])
def test_patches_shape_and_layout(shape):
    x = torch.rand(shape)
    p, empty = extract_patches(x, 6)
    n, c, h, w = shape
    assert p.shape == (n, h - 5, w - 5, c * 36)
    assert patch_grid_shape(h, w, 6) == (h - 5, w - 5)
    # patch at grid (i, j), channel-major (c, row, col), minus its per-channel mean
    i, j = 2, 3
    raw = x[1 % n, :, i:i + 6, j:j + 6]
    expected = (raw - raw.mean(dim=(1, 2), keepdim=True)).reshape(-1)
    torch.testing.assert_close(p[1 % n, i, j], expected)
    assert not empty.any()


def test_patches_constant_are_empty():
    x = torch.zeros(1, 3, 10, 10)
    x[0, 0, :, 5:] = 1.0  # vertical edge in red only; patches away from it are constant per channel
    x[0, 1] = 0.5
    _, empty = extract_patches(x, 3)
    assert empty[0, :, :3].all()            # columns 0-2: all-black red, constant green
    assert not empty[0, :, 3:5].any()       # straddle the edge


def test_patch_centring_modes_by_hand():
    """A 2x2 patch of a 2-channel 2x3 image, centred in each mode and worked out by hand."""
    x = torch.tensor([[[[1., 2., 6.], [3., 4., 6.]],       # channel 0
                       [[0., 0., 4.], [0., 0., 4.]]]])     # channel 1: flat at 0 under the first patch
    first = {mode: extract_patches(x, 2, center=mode)[0][0, 0, 0].tolist() for mode in
             (True, "channel", "patch", "image", False)}
    assert first[False] == [1, 2, 3, 4, 0, 0, 0, 0]
    assert first[True] == first["channel"] == [-1.5, -0.5, 0.5, 1.5, 0, 0, 0, 0]  # each channel's own mean
    assert first["patch"] == [-0.25, 0.75, 1.75, 2.75, -1.25, -1.25, -1.25, -1.25]  # the patch's mean 1.25
    assert first["image"] == [-1.5, -0.5, 0.5, 1.5, -2.5, -2.5, -2.5, -2.5]  # the image's mean 2.5


def test_patch_centring_keeps_what_its_name_says():
    """A flat patch of one colour: empty when each channel is centred, coded by its colour when
    the patch is centred as a whole; a flat gray one is empty in both; the image's mean keeps
    brightness. One channel: "patch" is "channel"."""
    colour = torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    gray = torch.full((1, 3, 8, 8), 0.4)
    assert extract_patches(colour, 3, center="channel")[1].all()
    assert not extract_patches(colour, 3, center="patch")[1].any()
    assert extract_patches(gray, 3, center="patch")[1].all()
    half = torch.cat([gray[..., :4], 1 - gray[..., 4:]], dim=3)  # flat 0.4 left, flat 0.6 right
    p, empty = extract_patches(half, 3, center="image")
    assert not empty.any() and torch.allclose(p[0, 0, 0], torch.full((27,), -0.1))
    mono = torch.rand(2, 1, 9, 9)
    torch.testing.assert_close(extract_patches(mono, 4, center="patch")[0], extract_patches(mono, 4)[0])
    with pytest.raises(ValueError, match="center"):
        extract_patches(mono, 4, center="pixel")


# ----------------------------------------------------------------- whitening
def test_whitening_identity_covariance():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(5, 5, generator=gen)
    x = (torch.randn(20000, 5, generator=gen) @ mix).double()
    w = Whitening(eps=1e-12)
    for chunk in x.split(3000):  # streamed
        w.partial_fit(chunk)
    w.finalize()
    z = x.numpy() @ w.whitening_
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(5), atol=1e-8)
    np.testing.assert_allclose(w.whitening_, w.whitening_.T)  # ZCA is symmetric
    np.testing.assert_allclose(w.whitening_ @ w.coloring_, np.eye(5), atol=1e-8)
    out = w.transform(x.float())
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(x)), atol=1e-5, rtol=0)


def test_whitening_eps_damps_small_directions():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1e-3], [0.0, -1e-3]])
    w = Whitening(eps=1e-3).partial_fit(x).finalize()
    evals = np.array([0.5, 0.5e-6])
    np.testing.assert_allclose(np.sort(np.diag(w.whitening_)), np.sort(1 / np.sqrt(evals + 1e-3))[::1], rtol=1e-6)


# ----------------------------------------------------------------- dictionary (Algorithm 1)
def _clusters(n_per, centres, noise, gen):
    x = torch.cat([c + noise * torch.randn(n_per, c.shape[0], generator=gen) for c in centres])
    return x / x.norm(dim=1, keepdim=True)


def test_dictionary_unit_atoms_and_finds_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:4] * 1.0
    x = _clusters(2000, centres, 0.15, gen)
    x = x[torch.randperm(len(x), generator=gen)]
    d = OnlineDictionary(4, batch_size=256, lr=0.1, dead_every=20)
    d.initialize(x[:4].clone(), seed=0)
    for chunk in x.split(1000):
        d.partial_fit(chunk)
    d.flush()
    atoms = d.dictionary_
    torch.testing.assert_close(atoms.norm(dim=1), torch.ones(4))
    # each true centre is matched by some atom at cosine > 0.95 after one epoch
    assert (centres @ atoms.T).max(dim=1).values.min() > 0.95


def test_dictionary_remainder_waits_for_flush():
    d = OnlineDictionary(2, batch_size=10).initialize(torch.eye(3)[:2], seed=0)
    d.partial_fit(torch.eye(3)[[0, 1, 2, 0, 1, 2, 0]])
    assert d.n_steps_ == 0 and len(d._buffer) == 7
    d.flush()
    assert d.n_steps_ == 1 and len(d._buffer) == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_incoherent_atoms_are_the_greedy_pass_in_order(chunk_size):
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(600, 8, generator=gen), dim=1)
    atoms, n_tried = incoherent_atoms(x.split(97), 20, 0.5, chunk_size=chunk_size)
    # reference: one candidate at a time, kept when no kept atom is closer than the bound
    kept = []
    for i, v in enumerate(x):
        if all(float(v @ x[j]) <= 0.5 for j in kept):
            kept.append(i)
            if len(kept) == 20:
                break
    torch.testing.assert_close(atoms, x[kept], rtol=0, atol=0)
    assert n_tried == kept[-1] + 1
    cos = atoms @ atoms.T - 2 * torch.eye(20)
    assert float(cos.max()) <= 0.5


def test_incoherent_atoms_too_few_names_the_bound():
    x = torch.eye(4).repeat(10, 1)  # only 4 directions, each repeated
    with pytest.raises(ValueError, match=r"found only 4 of n_atoms=5 .* max_coherence=0.1 among 40 candidates"):
        incoherent_atoms([x], 5, 0.1)


# ----------------------------------------------------------------- sparse coding
def test_one_sparse_each_patch_goes_to_its_best_atom():
    gen = torch.Generator().manual_seed(1)
    phi = torch.nn.functional.normalize(torch.randn(50, 12, generator=gen), dim=1)
    x = torch.nn.functional.normalize(torch.randn(300, 12, generator=gen), dim=1)
    idx, val = sparse_code(x, phi, "one_sparse")
    sims = x @ phi.T
    assert idx.shape == (300, 1)
    assert torch.equal(idx[:, 0], sims.argmax(dim=1))
    assert (sims.gather(1, idx) >= sims.max(dim=1, keepdim=True).values).all()
    assert torch.equal(val, torch.ones_like(val))


def test_threshold_codes_match_definition():
    gen = torch.Generator().manual_seed(2)
    phi = torch.nn.functional.normalize(torch.randn(40, 6, generator=gen), dim=1)
    x = torch.nn.functional.normalize(torch.randn(100, 6, generator=gen), dim=1)
    idx, val = sparse_code(x, phi, "threshold", threshold=0.5)
    sims = x @ phi.T
    for i in range(len(x)):
        active = set(idx[i][idx[i] >= 0].tolist())
        assert active == set(torch.nonzero(sims[i] > 0.5)[:, 0].tolist())
    assert torch.equal(val, (idx >= 0).float())
    # l1 normalisation: coefficients of a code sum to one
    _, v1 = sparse_code(x, phi, "threshold", threshold=0.5, code_norm="l1")
    rows = (idx >= 0).any(dim=1)
    torch.testing.assert_close(v1[rows].sum(dim=1), torch.ones(int(rows.sum())))


def test_threshold_empty_code_rules_and_cap():
    phi = torch.eye(4)
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.1, 0.0]])
    idx, _ = sparse_code(x, phi, "threshold", threshold=0.6)
    assert (idx[0] < 0).all() and idx[1].tolist()[0] == 0
    idx, _ = sparse_code(x, phi, "threshold", threshold=0.6, empty_code="argmax")
    assert idx[0][idx[0] >= 0].tolist() == [0]
    idx, _ = sparse_code(x, phi, "threshold", threshold=0.05, max_active=2)
    assert sorted(idx[1][idx[1] >= 0].tolist()) == [0, 1]
    idx, _ = sparse_code(x, phi, "top_k", n_nonzero=3, empty=torch.tensor([True, False]))
    assert (idx[0] < 0).all() and idx[1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_threshold_pass_gives_the_torch_codes(monkeypatch, dtype):
    import smt.coding
    if smt.coding.threshold_code is None:
        pytest.skip("numba not installed (the 'fast' extra)")
    gen = torch.Generator().manual_seed(3)
    phi = torch.nn.functional.normalize(torch.randn(600, 8, generator=gen, dtype=dtype), dim=1)
    x = torch.nn.functional.normalize(torch.randn(4000, 8, generator=gen, dtype=dtype), dim=1)
    x[::7] = 0  # empty patches: no atom above a positive threshold
    # 4000 rows span several blocks; at t -0.5 most rows have more atoms than the first pass keeps
    # per row (smt._threshold._KEEP, 512) and are scanned again; at 0.95 most rows have none.
    for t, rule in [(-0.5, "zero"), (0.1, "zero"), (0.5, "zero"), (0.95, "zero"), (0.95, "argmax"),
                    (0.5, "argmax")]:
        fast = sparse_code(x, phi, "threshold", threshold=t, empty_code=rule)
        monkeypatch.setattr(smt.coding, "threshold_code", None)
        slow = sparse_code(x, phi, "threshold", threshold=t, empty_code=rule)
        monkeypatch.undo()
        assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1]), (t, rule)
    assert (fast[0] >= 0).sum(1).max() >= 1
    from smt._threshold import _KEEP
    wide = sparse_code(x, phi, "threshold", threshold=-0.5)[0]
    assert (wide >= 0).sum(1).max() > _KEEP



@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_threshold_lists_are_the_padded_codes_unpadded(precision):
    """The flat lists the statistics pass takes: the rows of sparse_code's padded codes."""
    from smt.coding import threshold_code, threshold_lists
    if threshold_code is None:
        pytest.skip("numba not installed (the 'fast' extra)")
    gen = torch.Generator().manual_seed(4)
    phi = torch.nn.functional.normalize(torch.randn(300, 8, generator=gen), dim=1)
    x = torch.nn.functional.normalize(torch.randn(2500, 8, generator=gen), dim=1)
    for t, rule in [(0.5, "zero"), (0.9, "zero"), (0.9, "argmax")]:
        idx, _ = sparse_code(x, phi, "threshold", threshold=t, empty_code=rule, precision=precision)
        atoms, counts = threshold_lists(x, phi, t, rule, precision)
        assert atoms.dtype == np.int32 and counts.dtype == np.int64
        assert np.array_equal(counts, (idx >= 0).sum(1).numpy())
        assert np.array_equal(atoms, idx[idx >= 0].numpy())
    assert threshold_lists(x, phi, -0.1, "zero", "bf16") is None  # the bf16 compare needs t > 0
    with pytest.raises(ValueError, match="empty_code must be one of"):
        threshold_lists(x, phi, 0.5, "none")
    with pytest.raises(ValueError, match="precision must be one of"):
        threshold_lists(x, phi, 0.5, "zero", "fp8")

# ----------------------------------------------------------------- statistics and solve
def _random_codes(gen, b=3, h=5, w=6, m=2, k=7, p_empty=0.2):
    idx = torch.randint(0, k, (b, h, w, m), generator=gen)
    idx[..., 1:][torch.rand(b, h, w, m - 1, generator=gen) < 0.5] = -1  # variable code length
    nonempty = torch.rand(b, h, w, generator=gen) > p_empty
    idx[~nonempty] = -1
    val = (idx >= 0).float() * (1 + torch.rand(b, h, w, m, generator=gen))
    return idx, val, nonempty


def _brute_force(idx, val, nonempty, k, context, order, n_views=1):
    b, h, w, m = idx.shape
    scene = [i % (b // n_views) for i in range(b)]  # view-major layout
    pos = [(i, y, x) for i in range(b) for y in range(h) for x in range(w)]
    a = np.zeros((len(pos), k))
    for r, (i, y, x) in enumerate(pos):
        for j in range(m):
            if idx[i, y, x, j] >= 0:
                a[r, idx[i, y, x, j]] += val[i, y, x, j]
    node = np.array([bool(nonempty[i, y, x]) for i, y, x in pos])
    adj = np.zeros((len(pos), len(pos)))
    for r, (i, y, x) in enumerate(pos):
        for s, (i2, y2, x2) in enumerate(pos):
            near = context == "image" or max(abs(y - y2), abs(x - x2)) <= context
            if r != s and scene[i] == scene[i2] and near and node[r] and node[s]:
                adj[r, s] = 1
    deg = adj.sum(1)
    g = a[node].T @ a[node]
    if order == 1:
        mm = a.T @ (np.diag(deg) - adj) @ a
    else:
        keep = node & (deg > 0)
        resid = a - (adj @ a) / np.maximum(deg, 1)[:, None]
        mm = resid[keep].T @ resid[keep]
    return g, mm, int(node.sum())


@pytest.mark.parametrize("context", ["image", 1, 2])
@pytest.mark.parametrize("order", [1, 2])
def test_statistics_equal_brute_force(context, order):
    gen = torch.Generator().manual_seed(3)
    k = 7
    idx, val, nonempty = _random_codes(gen, k=k)
    nonempty[1] = True  # an image without constant patches takes the whole-image shortcut
    stats = ContextStatistics(k, context, order)
    stats.partial_fit(idx[:2], val[:2], nonempty[:2])  # batches add up
    stats.partial_fit(idx[2:], val[2:], nonempty[2:])
    g, mm, n = _brute_force(idx, val, nonempty, k, context, order)
    np.testing.assert_allclose(stats.gram_.numpy(), g, atol=1e-9)
    np.testing.assert_allclose(stats.context_.numpy(), mm, atol=1e-9)
    assert stats.n_patches_ == n


@pytest.mark.parametrize("context", ["image", 1])
@pytest.mark.parametrize("order", [1, 2])
def test_statistics_of_paired_views_equal_brute_force(context, order):
    # An image and its copy (e.g. gray) form one context: patches near each other in either view
    # are neighbours, the same position in the other view included.
    gen = torch.Generator().manual_seed(7)
    k = 6
    idx, val, nonempty = _random_codes(gen, b=4, h=4, w=5, k=k)
    stats = ContextStatistics(k, context, order).partial_fit(idx, val, nonempty, n_views=2)
    g, mm, n = _brute_force(idx, val, nonempty, k, context, order, n_views=2)
    # the brute force sums float32 values: equal to float32 precision
    np.testing.assert_allclose(stats.gram_.numpy(), g, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats.context_.numpy(), mm, rtol=1e-6, atol=1e-9)
    assert stats.n_patches_ == n
    with pytest.raises(ValueError, match="views"):
        stats.partial_fit(idx[:3], val[:3], nonempty[:3], n_views=2)


def test_solve_satisfies_constraint_and_objective():
    gen = torch.Generator().manual_seed(4)
    k = 12
    idx, val, nonempty = _random_codes(gen, b=6, h=6, w=6, m=3, k=k, p_empty=0.1)
    stats = ContextStatistics(k, 2, 1)
    stats.partial_fit(idx, val, nonempty)
    p, evals, skipped = solve_embedding(stats.gram_, stats.context_, stats.n_patches_, 5, n_skip=2)
    assert p.shape == (5, k) and skipped.shape == (2, k)
    v = stats.gram_.numpy() / stats.n_patches_
    v_eps = v + np.eye(k) * 1e-6 * np.trace(v) / k
    m = stats.context_.numpy() / stats.n_patches_
    np.testing.assert_allclose(p @ v_eps @ p.T, np.eye(5), atol=1e-8)       # P V P^T = I
    np.testing.assert_allclose(np.trace(p @ m @ p.T), evals.sum(), rtol=1e-8)  # objective = sum of kept eigenvalues
    full = scipy.linalg.eigh(m, v_eps, eigvals_only=True)
    np.testing.assert_allclose(evals, full[2:7], rtol=1e-7, atol=1e-10)      # the slowest after the skipped
    assert (np.diff(evals) >= 0).all()
    pivots = np.abs(p).argmax(axis=1)
    assert (p[np.arange(5), pivots] > 0).all()                                # sign convention


def test_solve_drops_unused_atoms():
    gen = torch.Generator().manual_seed(5)
    idx, val, nonempty = _random_codes(gen, b=4, h=6, w=6, m=1, k=6)
    stats = ContextStatistics(9, "image", 1)  # atoms 6-8 never used
    stats.partial_fit(idx, val, nonempty)
    p, _, _ = solve_embedding(stats.gram_, stats.context_, stats.n_patches_, 3)
    assert np.all(p[:, 6:] == 0) and np.all(np.isfinite(p))
    with pytest.raises(ValueError, match="exceeds the 6 atoms"):
        solve_embedding(stats.gram_, stats.context_, stats.n_patches_, 6, n_skip=1)


def test_one_sparse_constant_direction_has_zero_cost():
    gen = torch.Generator().manual_seed(6)
    idx, _, nonempty = _random_codes(gen, b=4, h=6, w=6, m=1, k=5, p_empty=0.0)
    stats = ContextStatistics(5, 1, 1).partial_fit(idx, (idx >= 0).float(), nonempty)
    _, _, skipped = solve_embedding(stats.gram_, stats.context_, stats.n_patches_, 2, n_skip=1)
    const = skipped[0] / skipped[0].max()
    np.testing.assert_allclose(const, np.ones(5), atol=1e-6)


# ----------------------------------------------------------------- pooling
def test_pooling_by_hand():
    beta = torch.zeros(1, 2, 5, 5)
    beta[0, 0, :4, :4] = 1.0
    beta[0, 1, 3:, 3:] = 2.0   # the first window (rows 0-3, cols 0-3) holds one of these, at (3, 3)
    z = pool_embeddings(beta, 4, 1).view(1, 2, 2, 2)
    torch.testing.assert_close(z[0, :, 0, 0], torch.tensor([1.0, 1 / 8]) / np.hypot(1.0, 1 / 8))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(1, 2, 2))
    assert pool_embeddings(torch.zeros(2, 3, 23, 23)).shape == (2, 3 * 10 * 10)


def test_gaussian_pooling_by_hand():
    # 3x3 window, sigma 1: the centre weighs 1, an edge exp(-1/2), a corner exp(-1), over their sum.
    e1, e2 = np.exp(-0.5), np.exp(-1.0)
    total = 1 + 4 * e1 + 4 * e2
    torch.testing.assert_close(pool_window(3, 1.0, torch.float64),
                               torch.tensor([[e2, e1, e2], [e1, 1, e1], [e2, e1, e2]], dtype=torch.float64) / total)
    beta = torch.zeros(1, 2, 3, 4)
    beta[0, 0, 1, 1] = 1.0    # the first window's centre
    beta[0, 1, 0, 0] = 1.0    # its corner; the second window (columns 1-3) holds it nowhere
    z = pool_embeddings(beta, 3, 1, pool_sigma=1.0).view(1, 2, 1, 2)
    torch.testing.assert_close(z[0, :, 0, 0], torch.tensor([1.0, e2], dtype=torch.float32) / float(np.hypot(1.0, e2)))
    torch.testing.assert_close(z[0, :, 0, 1], torch.tensor([1.0, 0.0]))  # the centre is its left edge
    assert pool_embeddings(torch.zeros(2, 3, 23, 23), pool_sigma=2.0).shape == (2, 3 * 10 * 10)


def test_gaussian_pooling_limits():
    # A very wide Gaussian is the box; a very narrow one keeps the centre (the middle 2x2 of an
    # even window, equally), never 0 / 0.
    beta = torch.randn(2, 5, 9, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pool_embeddings(beta, 4, 2, pool_sigma=1e6), pool_embeddings(beta, 4, 2))
    torch.testing.assert_close(pool_window(4, 1e6), pool_window(4))
    torch.testing.assert_close(pool_window(4), torch.full((4, 4), 1 / 16))
    torch.testing.assert_close(pool_embeddings(beta, 3, 3, pool_sigma=1e-3),
                               l2_normalize(beta[:, :, 1::3, 1::3], dim=1).flatten(1))
    middle = torch.zeros(4, 4)
    middle[1:3, 1:3] = 0.25
    torch.testing.assert_close(pool_window(4, 1e-3), middle)
    torch.testing.assert_close(pool_window(5, 1e-300).sum(), torch.tensor(1.0))


def test_torch_solver_matches_scipy(monkeypatch):
    # The Cholesky + torch.linalg.eigh path (CUDA, and CPU above 8192 atoms) solves the same problem.
    import smt.spectral
    import smt.statistics
    gen = torch.Generator().manual_seed(8)
    idx, val, nonempty = _random_codes(gen, b=6, h=6, w=6, m=3, k=12, p_empty=0.1)
    stats = ContextStatistics(12, 2, 1).partial_fit(idx, val, nonempty)
    p_scipy, e_scipy, _ = solve_embedding(stats.gram_, stats.context_, stats.n_patches_, 5, n_skip=1)
    monkeypatch.setattr(smt.spectral, "_SCIPY_MAX_ATOMS", 0)
    p_torch, e_torch, _ = solve_embedding(stats.gram_, stats.context_, stats.n_patches_, 5, n_skip=1)
    np.testing.assert_allclose(e_torch, e_scipy, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(p_torch, p_scipy, rtol=1e-6, atol=1e-8)


# the CPU path in one thread and split over 3, and the CUDA path
@pytest.mark.parametrize("path", ["sparse_product", "sparse_product_threads", "dense"])
@pytest.mark.parametrize("max_width", [2, 40])  # little padding, and rows of very different widths
def test_pair_accumulation_matches_dense_outer_products(max_width, path, monkeypatch):
    import smt.spectral
    import smt.statistics
    if path == "sparse_product_threads":
        monkeypatch.setattr(smt.statistics, "_MIN_PRODUCT_ROWS", 1)
        monkeypatch.setattr(smt.spectral.torch, "get_num_threads", lambda: 3)
    gen = torch.Generator().manual_seed(9)
    n, k = 300, 11

    def rows(width_max):
        width = torch.randint(1, width_max + 1, (n,), generator=gen)
        width[torch.rand(n, generator=gen) < 0.9] = 1
        idx = torch.randint(0, k, (n, width_max), generator=gen)  # repeats in a row add up
        idx[torch.arange(width_max)[None, :] >= width[:, None]] = -1
        idx = idx[:, torch.randperm(width_max, generator=gen)]  # pads anywhere in a row
        val = (idx >= 0).float() * torch.rand(n, width_max, generator=gen)
        dense = torch.zeros(n, k, dtype=torch.float64)
        dense.scatter_add_(1, idx.clamp(min=0), val.double())
        return idx, val, dense

    def add(target, k, *codes):
        if path == "dense":
            smt.statistics._add_dense_pairs([(target, 1.0)], k, *codes)
        else:
            smt.statistics._add_pairs(target, k, *codes)
    (ia, va, a), (ib, vb, b) = rows(max_width), rows(max_width + 3)
    target = torch.zeros(k * k, dtype=torch.float64)
    add(target, k, ia, va, ia, va)
    torch.testing.assert_close(target.view(k, k), a.T @ a)
    add(target, k, ia, va, ib, vb)  # adds to what is there
    torch.testing.assert_close(target.view(k, k), a.T @ a + a.T @ b)


@pytest.mark.parametrize("rule", ["zero", "argmax"])
def test_bf16_similarities_are_compared_in_float32(monkeypatch, rule):
    """precision="bf16": the compiled pass on bfloat16 bits gives the codes of comparing the
    bfloat16 similarities, widened to float32, with the float32 threshold."""
    import smt.coding
    if smt.coding.threshold_code is None:
        pytest.skip("numba not installed (the 'fast' extra)")
    gen = torch.Generator().manual_seed(4)
    phi = torch.nn.functional.normalize(torch.randn(700, 8, generator=gen), dim=1)
    x = torch.nn.functional.normalize(torch.randn(3000, 8, generator=gen), dim=1)
    x[::5] = -phi[0]  # rows whose similarities are all far below a high threshold
    for t in (0.3, 0.8):
        fast = sparse_code(x, phi, "threshold", threshold=t, empty_code=rule, precision="bf16")
        s = (x.bfloat16() @ phi.bfloat16().T).float()
        expected = [torch.nonzero(row > torch.tensor(t, dtype=torch.float32))[:, 0].tolist() for row in s]
        if rule == "argmax":
            expected = [e or [int(row.argmax())] for e, row in zip(expected, s)]
        got = [r[r >= 0].tolist() for r in fast[0]]
        assert got == expected
        monkeypatch.setattr(smt.coding, "threshold_code", None)  # torch's pass on the same bf16 blocks
        slow = sparse_code(x, phi, "threshold", threshold=t, empty_code=rule, precision="bf16")
        monkeypatch.undo()
        assert torch.equal(fast[0], slow[0])
    # the codes differ from float32's only near the threshold
    def dense(idx):
        return torch.zeros(len(idx), 701, dtype=torch.bool).scatter_(1, idx.where(idx >= 0, 700), True)[:, :700]
    f32 = dense(sparse_code(x, phi, "threshold", threshold=0.3)[0])
    bf16 = dense(sparse_code(x, phi, "threshold", threshold=0.3, precision="bf16")[0])
    assert 0 < (f32 != bf16).sum() < 0.01 * f32.sum()
    with pytest.raises(ValueError, match="precision"):
        sparse_code(x, phi, precision="fp8")


def test_real_valued_codes_carry_the_similarities():
    from smt.coding import sparse_code
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1]]), dim=1)
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.5, 0], [0, 0, 1.0], [0.1, 0.0, -1.0]]), dim=1)
    s = x @ d.T  # by hand: row 0 -> atoms 0 (0.894) and 1 (0.894); row 1 -> atom 2; row 2 -> none
    idx, bin_val = sparse_code(x, d, "threshold", 0.5)
    _, sim = sparse_code(x, d, "threshold", 0.5, code_values="similarity")
    _, exc = sparse_code(x, d, "threshold", 0.5, code_values="excess")
    assert idx.tolist() == [[0, 1], [2, -1], [-1, -1]]
    want = torch.where(idx >= 0, s.gather(1, idx.clamp(min=0)), torch.zeros(()))
    torch.testing.assert_close(sim, want)
    torch.testing.assert_close(exc, torch.where(idx >= 0, want - 0.5, torch.zeros(())))
    assert torch.equal(bin_val, (idx >= 0).float())
    _, l1 = sparse_code(x, d, "threshold", 0.5, code_norm="l1", code_values="similarity")
    torch.testing.assert_close(l1[0], want[0] / want[0].sum())
    _, bf16 = sparse_code(x, d, "threshold", 0.5, code_values="similarity", precision="bf16")
    torch.testing.assert_close(bf16, want)  # the coefficients are float32 similarities
    with pytest.raises(ValueError, match="code_values"):
        sparse_code(x, d, "one_sparse", code_values="excess")
    with pytest.raises(ValueError, match="code_values"):
        sparse_code(x, d, "threshold", 0.5, code_values="cosine")
