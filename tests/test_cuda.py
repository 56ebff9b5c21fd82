"""The CUDA path against the CPU path (skipped without a GPU; benchmarks/gpu.py runs these first).

The statistics' CUDA path (int8 dense-block GEMMs) is also run on CPU by tests/test_statistics.py.
"""
import numpy as np
import pytest
import torch

from smt.statistics import ContextStatistics

from conftest import small_smt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _codes(gen, b=6, h=7, w=7, width=30, k=700):
    idx = torch.full((b * h * w, width), -1, dtype=torch.int64)
    for i in range(len(idx)):
        c = int(torch.randint(0, width + 1, (1,), generator=gen))
        idx[i, :c] = torch.randperm(k, generator=gen)[:c]
    return idx.view(b, h, w, width), (idx >= 0).float().view(b, h, w, width), (idx >= 0).any(-1).view(b, h, w)


@pytest.mark.parametrize("context", ["image", 1])
@pytest.mark.parametrize("n_views", [1, 2])
def test_cuda_statistics_equal_cpu_statistics_exactly(context, n_views):
    idx, val, nonempty = _codes(torch.Generator().manual_seed(0))
    cpu = ContextStatistics(700, context).partial_fit(idx, val, nonempty, n_views=n_views)
    gpu = ContextStatistics(700, context, device="cuda").partial_fit(idx.cuda(), val.cuda(), nonempty.cuda(),
                                                                     n_views=n_views)
    assert torch.equal(gpu.gram_.cpu(), cpu.gram_)
    assert torch.equal(gpu.context_.cpu(), cpu.context_)


def test_cuda_fit_matches_cpu_fit(digits):
    X, _ = digits
    params = dict(coding="threshold", threshold=0.4, context="image")
    cpu = small_smt(**params, device="cpu").fit(X[:400])
    gpu = small_smt(**params, device="cuda").fit(X[:400])
    np.testing.assert_allclose(gpu.whitening_, cpu.whitening_, rtol=1e-6, atol=1e-9)
    z_cpu, z_gpu = cpu.transform(X[:100]), gpu.transform(torch.as_tensor(X[:100], device="cuda"))
    assert z_gpu.device.type == "cuda"
    # float32 GEMMs differ by ulps between devices: codes may flip at the threshold, rarely
    assert np.mean(np.abs(z_gpu.cpu().numpy() - z_cpu) > 1e-3) < 0.01


def test_cuda_fit_transform_equals_fit_then_transform(digits):
    X, _ = digits
    params = dict(coding="threshold", threshold=0.4, context="image", device="cuda")
    z = small_smt(**params).fit_transform(X[:300])
    np.testing.assert_array_equal(z, small_smt(**params).fit(X[:300]).transform(X[:300]))
