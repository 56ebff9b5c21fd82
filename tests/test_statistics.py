"""The code statistics: every accumulation path gives the same sums as a brute force.

Binary codes (and binary codes times an integer row weight) are counted exactly by the compiled
kernel on CPU and by int8 dense blocks on CUDA; real-valued codes go through scipy's sparse product
(CPU) or float64 dense blocks. All must agree with dense outer products to the last bit where the
sums are integers.
"""
import numpy as np
import pytest
import torch

import smt.statistics
from smt.statistics import ContextStatistics

pairs = pytest.importorskip("smt._pairs", reason="the compiled kernel needs numba (the fast extra)")


def _codes(n, k, width, gen, binary=True, distinct=True):
    """Padded codes with -1 pads anywhere in a row; ``distinct=False`` lets a row repeat an atom."""
    idx = torch.full((n, width), -1, dtype=torch.int64)
    for i in range(n):
        c = int(torch.randint(0, (min(width, k) if distinct else width) + 1, (1,), generator=gen))
        atoms = torch.randperm(k, generator=gen)[:c] if distinct else torch.randint(0, k, (c,), generator=gen)
        idx[i, :c] = atoms
        idx[i] = idx[i, torch.randperm(width, generator=gen)]
    val = (idx >= 0).float()
    if not binary:
        val = val * torch.rand(idx.shape, generator=gen)
    return idx, val


def _code_maps(b, h, w, k, width, gen, binary=True, p_constant=0.2, first_full=False):
    """(b, h, w, width) padded code maps in which a share ``p_constant`` of the patches is constant
    (no code, not a node); ``first_full`` keeps every patch of image 0."""
    idx, val = _codes(b * h * w, k, width, gen, binary=binary)
    idx, val = idx.view(b, h, w, -1), val.view(b, h, w, -1)
    nonempty = torch.rand(b, h, w, generator=gen) > p_constant
    if first_full:
        nonempty[0] = True
    idx[~nonempty] = -1
    val[~nonempty] = 0
    return idx, val, nonempty


def _dense(idx, val, k):
    out = torch.zeros(idx.shape[0], k + 1, dtype=torch.float64)
    out.scatter_add_(1, idx.where(idx >= 0, k), val.double() * (idx >= 0))
    return out[:, :k]


@pytest.fixture
def kernel_always(monkeypatch):
    """Send every pair count through the compiled kernel, however small."""
    monkeypatch.setattr(smt.statistics, "_MIN_KERNEL_PAIRS_PER_ENTRY", 0.0)


@pytest.mark.parametrize("k", [5, 1100])  # one tile; three blocks of the result, the last ragged
def test_kernel_counts_equal_outer_products(k, kernel_always):
    gen = torch.Generator().manual_seed(0)
    ia, va = _codes(400, k, 30, gen)
    ib, vb = _codes(400, k, 50, gen, distinct=False)
    weight = torch.randint(-9, 10, (400,), generator=gen).double()
    a, b = _dense(ia, va, k), _dense(ib, vb, k)
    out = torch.zeros(k * k, dtype=torch.float64)
    smt.statistics._add_pairs(out, k, ia, va * weight[:, None].float(), ia, va)
    expected = (a * weight[:, None]).T @ a
    assert torch.equal(out.view(k, k), expected)
    smt.statistics._add_pairs(out, k, ia, -va, ib, vb)  # asymmetric, repeats in B's rows
    assert torch.equal(out.view(k, k), expected - a.T @ b)


def test_kernel_handles_repeats_in_a_symmetric_call(kernel_always):
    gen = torch.Generator().manual_seed(1)
    k = 300
    idx, val = _codes(200, k, 20, gen, distinct=False)
    a = _dense(idx, val, k)
    out = torch.zeros(k * k, dtype=torch.float64)
    smt.statistics._add_pairs(out, k, idx, val, idx, val)
    assert torch.equal(out.view(k, k), a.T @ a)


def test_kernel_refuses_real_coefficients(kernel_always):
    gen = torch.Generator().manual_seed(2)
    idx, val = _codes(50, 20, 6, gen, binary=False)
    out = np.zeros((20, 20))
    assert not smt.statistics._add_pair_counts([(out, 1.0)], idx, val, idx, val)
    assert not out.any()


def test_kernel_splits_rows_before_int32_overflows(kernel_always, monkeypatch):
    monkeypatch.setattr(pairs, "_INT32_ROOM", 1000)  # a part holds at most 1000 // 97 rows
    gen = torch.Generator().manual_seed(3)
    k = 300
    idx, val = _codes(300, k, 12, gen)
    a = _dense(idx, val, k)
    out = torch.zeros(k * k, dtype=torch.float64)
    smt.statistics._add_pairs(out, k, idx, val * 97, idx, val)
    assert torch.equal(out.view(k, k), 97 * a.T @ a)


@pytest.mark.parametrize("binary", [True, False])
def test_dense_block_path_equals_sparse_product(binary, monkeypatch):
    """The CUDA path (int8 or float64 dense blocks), run on CPU, against scipy's product."""
    monkeypatch.setattr(smt.statistics, "_MAX_DENSE_BLOCK", 40 * 37)  # several blocks of 37 rows
    gen = torch.Generator().manual_seed(4)
    k = 37
    ia, va = _codes(300, k, 9, gen, binary=binary)
    ib, vb = _codes(300, k, 14, gen, binary=binary, distinct=False)
    va = va * 3
    dense = torch.zeros(k * k, dtype=torch.float64)
    smt.statistics._add_dense_pairs([(dense, 1.0)], k, ia, va, ib, vb)
    sparse = np.zeros((k, k))
    smt.statistics._add_sparse_product([(sparse, 1.0)], ia, va, ib, vb)
    expected = _dense(ia, va, k).T @ _dense(ib, vb, k)
    if binary:
        assert torch.equal(dense.view(k, k), expected)
        assert np.array_equal(sparse, expected.numpy())
    else:
        torch.testing.assert_close(dense.view(k, k), expected)
        np.testing.assert_allclose(sparse, expected.numpy(), rtol=1e-12)


def _statistics(monkeypatch, path, idx, val, nonempty, context, order, n_views, k):
    if path == "kernel":
        monkeypatch.setattr(smt.statistics, "_MIN_KERNEL_PAIRS_PER_ENTRY", 0.0)
    elif path == "sparse_product":
        monkeypatch.setattr(smt.statistics, "_pairs", None)
    elif path == "dense":
        monkeypatch.setattr(smt.statistics, "_add_pair_counts", lambda *a: False)
        monkeypatch.setattr(smt.statistics, "_add_sparse_product", lambda outs, *a: smt.statistics._add_dense_pairs(
            [(torch.from_numpy(o.reshape(-1)), scale) for o, scale in outs], k, *a))
    stats = ContextStatistics(k, context, order).partial_fit(idx, val, nonempty, n_views=n_views)
    monkeypatch.undo()
    return stats


def _brute_force(idx, val, nonempty, context, order, n_views, k):
    """G and M from dense codes and an explicit Laplacian of the context graph."""
    b, h, w, m = idx.shape
    codes = _dense(idx.reshape(-1, m), val.reshape(-1, m), k).reshape(n_views, b // n_views, h * w, k)
    node = nonempty.reshape(n_views, b // n_views, h * w)
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    g = torch.zeros(k, k, dtype=torch.float64)
    mm = torch.zeros(k, k, dtype=torch.float64)
    for s in range(b // n_views):
        a = codes[:, s].reshape(-1, k)  # (V * h * w, K) view-major
        alive = node[:, s].reshape(-1)
        p = pos.repeat(n_views, 1)
        if context == "image":
            adj = torch.ones(len(p), len(p), dtype=torch.float64)
        else:
            adj = ((p[:, None] - p[None]).abs().max(-1).values <= context).double()
        adj.fill_diagonal_(0)
        adj = adj * alive[:, None] * alive[None, :]
        a = a * alive[:, None]
        g += a.T @ a
        deg = adj.sum(1)
        if order == 1:
            lap = torch.diag(deg) - adj
            mm += a.T @ lap @ a
        else:
            d = torch.eye(len(p), dtype=torch.float64) - adj / deg.clamp(min=1)[:, None]
            d = d * (deg > 0)[:, None]
            r = d @ a
            mm += r.T @ r
    return g, mm


@pytest.mark.parametrize("path", ["kernel", "sparse_product", "dense"])
@pytest.mark.parametrize("context", ["image", 1])
@pytest.mark.parametrize("n_views", [1, 2])
@pytest.mark.parametrize("binary", [True, False])
def test_statistics_equal_brute_force_on_every_path(path, context, n_views, binary, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    k, b, h, w = 300, 4, 4, 5
    # some images with constant patches, and one without
    idx, val, nonempty = _code_maps(b, h, w, k, 12, gen, binary=binary, first_full=True)
    for order in (1, 2):
        stats = _statistics(monkeypatch, path, idx, val, nonempty, context, order, n_views, k)
        g, mm = _brute_force(idx, val, nonempty, context, order, n_views, k)
        if binary and order == 1:
            assert torch.equal(stats.gram_, g)
            assert torch.equal(stats.context_, mm)
        else:
            torch.testing.assert_close(stats.gram_, g, rtol=1e-12, atol=1e-9)
            torch.testing.assert_close(stats.context_, mm, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("share", [0.0, float("inf")])  # the dense GEMM always / the sparse product always
@pytest.mark.parametrize("binary", [True, False])
def test_whole_image_outer_products_equal_brute_force_on_both_paths(share, binary, monkeypatch):
    """M's whole-image term subtracts s s^T per image by a dense GEMM or by the sparse product of the
    image sums, whichever is cheaper: both give the brute-force M, exactly for binary codes."""
    monkeypatch.setattr(smt.statistics, "_SPARSE_OUTER_PAIRS_PER_ENTRY", share)
    gen = torch.Generator().manual_seed(9)
    k, b, h, w = 500, 6, 3, 4
    idx, val, nonempty = _code_maps(b, h, w, k, 7, gen, binary=binary)
    stats = ContextStatistics(k, "image", 1).partial_fit(idx, val, nonempty)
    _, mm = _brute_force(idx, val, nonempty, "image", 1, 1, k)
    if binary:
        assert torch.equal(stats.context_, mm)
    else:
        torch.testing.assert_close(stats.context_, mm, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("context", ["image", 2])
def test_kernel_and_sparse_product_statistics_are_identical(context, monkeypatch):
    """Binary codes: the compiled counts and scipy's product give bit-identical statistics."""
    gen = torch.Generator().manual_seed(6)
    k = 520
    idx, val = _codes(6 * 7 * 7, k, 25, gen)
    idx, val = idx.view(6, 7, 7, -1), val.view(6, 7, 7, -1)
    nonempty = (idx >= 0).any(-1)
    fast = _statistics(monkeypatch, "kernel", idx, val, nonempty, context, 1, 1, k)
    slow = _statistics(monkeypatch, "sparse_product", idx, val, nonempty, context, 1, 1, k)
    assert torch.equal(fast.gram_, slow.gram_)
    assert torch.equal(fast.context_, slow.context_)
    assert torch.equal(fast.usage_, slow.usage_)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("binary", [True, False])
def test_window_plus_weighted_whole_image_is_the_sum_of_both(order, binary):
    gen = torch.Generator().manual_seed(5)
    k, b, h, w = 23, 6, 5, 4
    idx, val = _codes(b * h * w, k, 4, gen, binary=binary)
    idx, val = idx.view(b, h, w, 4), val.view(b, h, w, 4)
    nonempty = torch.rand(b, h, w, generator=gen) > 0.15  # constant patches in some images
    idx[~nonempty], val[~nonempty] = -1, 0  # which have no code
    window = ContextStatistics(k, 1, order).partial_fit(idx, val, nonempty)
    image = ContextStatistics(k, "image", order).partial_fit(idx, val, nonempty)
    mixed = ContextStatistics(k, 1, order, image_weight=0.25).partial_fit(idx, val, nonempty)
    torch.testing.assert_close(mixed.gram_, window.gram_, rtol=0, atol=0)
    torch.testing.assert_close(mixed.context_, window.context_ + 0.25 * image.context_, rtol=1e-12, atol=1e-10)
    assert mixed.n_patches_ == window.n_patches_ == int(nonempty.sum())
    zero = ContextStatistics(k, 1, order, image_weight=0.0).partial_fit(idx, val, nonempty)
    torch.testing.assert_close(zero.context_, window.context_, rtol=0, atol=0)


@pytest.mark.parametrize("u", [1.0, 0.3])
def test_weighted_gray_view_equals_the_weighted_graph_by_brute_force(u, kernel_always):
    """view_weight u: edges weigh u_i u_j (1 colour-colour, u colour-gray, u^2 gray-gray) and a
    gray patch counts u in G; scenes with constant patches included."""
    if smt.statistics._pairs is None:
        pytest.skip("numba not installed (the 'fast' extra)")
    gen = torch.Generator().manual_seed(8)
    k, scenes, h, w = 40, 3, 3, 4
    idx, val, nonempty = _code_maps(2 * scenes, h, w, k, 6, gen, p_constant=0.25, first_full=True)
    stats = ContextStatistics(k, "image", 1, view_weight=u).partial_fit(idx, val, nonempty, n_views=2)
    codes = _dense(idx.reshape(-1, idx.shape[-1]), val.reshape(-1, idx.shape[-1]), k).reshape(2, scenes, h * w, k)
    alive = nonempty.reshape(2, scenes, h * w).double()
    g = torch.zeros(k, k, dtype=torch.float64)
    mm = torch.zeros(k, k, dtype=torch.float64)
    for s in range(scenes):
        a = codes[:, s].reshape(-1, k)
        node = torch.cat([alive[0, s], u * alive[1, s]])  # node weights, 0 for constant patches
        adj = node[:, None] * node[None, :]
        adj.fill_diagonal_(0)
        g += a.T @ (node[:, None] * a)
        mm += a.T @ (torch.diag(adj.sum(1)) - adj) @ a
    if u == 1:
        assert torch.equal(stats.gram_, g) and torch.equal(stats.context_, mm)
    else:
        torch.testing.assert_close(stats.gram_, g, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(stats.context_, mm, rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="view_weight=0.3 needs binary codes"):
        ContextStatistics(k, 1, 1, view_weight=0.3).partial_fit(idx, val, nonempty, n_views=2)


def test_empty_like_keeps_the_parameters_and_no_sums():
    stats = ContextStatistics(7, 2, 2, image_weight=0.5, view_weight=0.25)
    idx = torch.tensor([[[[0, 3], [1, -1]], [[2, -1], [4, 5]]]])  # (1, 2, 2, 2)
    stats.partial_fit(idx, (idx >= 0).float(), torch.ones(1, 2, 2, dtype=torch.bool))
    empty = stats.empty_like()
    assert not empty.has_state and stats.has_state
    assert [getattr(empty, a) for a in ("n_atoms", "context", "order", "device", "image_weight", "view_weight")] == \
        [7, 2, 2, "cpu", 0.5, 0.25]
