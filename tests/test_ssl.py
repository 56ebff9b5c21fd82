"""Deep SSL baselines (smt.ssl): losses on hand-made tensors, optimiser, sampler, resume."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ssl = pytest.importorskip("smt.ssl")

from smt.ssl import TrainConfig, Trainer, build_method  # noqa: E402
from smt.ssl.augment import TwoViewAugment  # noqa: E402
from smt.ssl.backbones import ResNet18, ViT  # noqa: E402
from smt.ssl.msn import mean_entropy, power_law_prior, prior_kl, sharpen  # noqa: E402
from smt.ssl.optim import LARS, param_groups, warmup_cosine  # noqa: E402
from smt.ssl.sampler import ClassBatchSampler, long_tailed_indices, power_law_counts  # noqa: E402
from smt.ssl.simclr import nt_xent  # noqa: E402
from smt.ssl.vicreg import covariance_loss, invariance_loss, variance_loss, vicreg_loss  # noqa: E402
from _ssl_common import _one_thread  # noqa: E402,F401  (autouse: one torch thread)

TINY = dict(width=4, proj_hidden=32)
TINY_VIT = dict(vit_dim=16, vit_depth=1, vit_heads=2, proj_hidden=32, n_prototypes=8)



# ------------------------------------------------------------------ SimCLR
def test_nt_xent_identical_orthonormal_views_is_known():
    b, t = 4, 0.2
    z = torch.eye(8)[:b]
    expected = math.log(1 + (2 * b - 2) * math.exp(-1 / t))
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(expected, rel=1e-5)


def test_nt_xent_identical_views_beat_random_views():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 16, generator=g)
    same = float(nt_xent(z1, z1.clone(), 0.2))
    rand = float(nt_xent(z1, torch.randn(32, 16, generator=g), 0.2))
    assert same < 0.5 * rand
    # random views carry no information: about log(2B - 1) at a high temperature
    assert float(nt_xent(z1, torch.randn(32, 16, generator=g), 100.0)) == pytest.approx(math.log(63), rel=0.01)


# ------------------------------------------------------------------ VICReg
def test_vicreg_terms_on_known_tensors():
    z = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [1.0, -2.0], [-1.0, 2.0]])  # uncorrelated columns
    assert float(invariance_loss(z, z)) == 0.0
    assert float(invariance_loss(z, z + 1)) == pytest.approx(1.0)
    # std of the columns: sqrt(4/3) and 2*sqrt(4/3), both >= 1 -> no variance penalty
    assert float(variance_loss(z)) == 0.0
    # constant embeddings: std sqrt(eps) in every column
    assert float(variance_loss(torch.ones(4, 3))) == pytest.approx(1 - math.sqrt(1e-4))
    assert float(covariance_loss(z)) == pytest.approx(0.0, abs=1e-7)
    # two identical columns: off-diagonal cov = var = 4/3, twice, over D = 2
    zz = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert float(covariance_loss(zz)) == pytest.approx(2 * (4 / 3) ** 2 / 2)
    loss, terms = vicreg_loss(z, z)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert set(terms) == {"invariance", "variance", "covariance"}


# ------------------------------------------------------------------ MSN / PMSN
def test_mean_entropy_is_maximal_for_uniform_assignments():
    k = 8
    uniform = torch.full((5, k), 1 / k)
    assert float(mean_entropy(uniform)) == pytest.approx(math.log(k), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        p = torch.softmax(3 * torch.randn(5, k, generator=g), dim=1)
        assert float(mean_entropy(p)) < math.log(k)
        # the uniform prior's KL is log K - H: the same me-max term
        assert float(prior_kl(p, torch.full((k,), 1 / k))) == pytest.approx(math.log(k) - float(mean_entropy(p)),
                                                                           abs=1e-5)


def test_pmsn_prior_is_a_normalised_power_law():
    p = power_law_prior(10, 0.25)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    k = torch.arange(1, 11, dtype=torch.float32)
    assert torch.allclose(p / p[0], k ** -0.25, rtol=1e-5)
    assert torch.allclose(power_law_prior(5, 0.0), torch.full((5,), 0.2))
    assert float(prior_kl(p[None].expand(3, -1), p)) == pytest.approx(0.0, abs=1e-6)
    assert ssl.PMSN.__mro__[1] is ssl.MSN


def test_sharpen_lowers_entropy():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    s = sharpen(p, 0.25)
    assert float(s.sum()) == pytest.approx(1.0)
    assert s[0, 0] > p[0, 0] and s.argmax() == p.argmax()


# ------------------------------------------------------------------ backbones and augmentations
def test_backbones_shapes_and_masking():
    x = torch.randn(2, 3, 32, 32)
    assert ResNet18(width=4)(x).shape == (2, 32)
    vit = ViT(dim=16, depth=1, heads=2)
    assert vit(x).shape == (2, 16) and vit.n_patches == 64
    assert vit(x, mask_ratio=0.5, generator=torch.Generator().manual_seed(0)).shape == (2, 16)


def test_two_view_augment_is_seeded():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a1, a2 = TwoViewAugment()(x, torch.Generator().manual_seed(1))
    b1, _ = TwoViewAugment()(x, torch.Generator().manual_seed(1))
    assert a1.shape == (4, 3, 32, 32) and torch.equal(a1, b1) and not torch.equal(a1, a2)
    assert torch.isfinite(a1).all()


# ------------------------------------------------------------------ optimisation
def test_warmup_cosine():
    assert warmup_cosine(0.0, 0.1, 1.0) == 0.0
    assert warmup_cosine(0.1, 0.1, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1, 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["simclr", "vicreg", "msn", "pmsn"])
def test_one_step_lowers_the_loss_on_a_fixed_batch(name):
    kw = TINY_VIT if name in ("msn", "pmsn") else TINY
    method = build_method(name, **kw)
    if name in ("msn", "pmsn"):
        method.mask_ratio = 0.0  # the same tokens before and after the step
    method.train()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(16, 3, 32, 32, generator=g), torch.randn(16, 3, 32, 32, generator=g)
    if name in ("simclr", "vicreg"):
        opt = LARS(param_groups(method, 1e-5), lr=0.5)
    else:
        opt = torch.optim.AdamW(param_groups(method, 0.0), lr=1e-3)
    loss0, _ = method.training_loss(x1, x2)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    loss1, _ = method.training_loss(x1, x2)
    assert float(loss1.detach()) < float(loss0.detach())


# ------------------------------------------------------------------ sampler
@pytest.mark.parametrize("k", [1, 2, 5])
def test_class_sampler_batches_have_exactly_k_classes_and_cover_the_data(k):
    labels = np.repeat(np.arange(5), [40, 30, 20, 10, 20])
    s = ClassBatchSampler(labels, batch_size=10, classes_per_batch=k, seed=3, min_batch_size=1)  # no tail merging
    for epoch in range(2):
        batches = s.batches(epoch)
        for b in batches:
            assert len(np.unique(labels[b])) == k and 1 <= len(b) <= 10
        seen = np.concatenate(batches)
        assert set(seen) == set(range(len(labels)))              # every index, once per epoch
        n_repeats = len(seen) - len(labels)
        assert n_repeats <= k * 3                                 # only end-of-epoch padding repeats
    assert [b.tolist() for b in s.batches(1)] == [b.tolist() for b in s.batches(1)]
    assert [b.tolist() for b in s.batches(0)] != [b.tolist() for b in s.batches(1)]


def test_class_sampler_balanced_data_has_no_repeats_for_k_all():
    labels = np.repeat(np.arange(4), 25)
    batches = ClassBatchSampler(labels, batch_size=20, classes_per_batch=4).batches(0)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(100))


def test_class_sampler_rejects_bad_k():
    with pytest.raises(ValueError):
        ClassBatchSampler([0, 1], batch_size=4, classes_per_batch=3)


def test_long_tailed_indices_follow_a_power_law():
    labels = np.repeat(np.arange(10), 100)
    counts = power_law_counts(100, 10, 1.0)
    assert counts.tolist() == [100, 50, 33, 25, 20, 16, 14, 12, 11, 10]
    keep = long_tailed_indices(labels, 100, 1.0)
    assert np.bincount(labels[keep]).tolist() == counts.tolist()


# ------------------------------------------------------------------ trainer: resume, kNN
def _tiny_data(n=48):
    g = np.random.default_rng(0)
    y = np.arange(n) % 4
    x = (g.integers(0, 60, (n, 32, 32, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    return x, y


@pytest.mark.parametrize("name", ["simclr", "msn"])
def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path, name):
    x, y = _tiny_data()
    kw = TINY_VIT if name == "msn" else TINY

    def cfg(epochs, ckpt=None):
        return TrainConfig(epochs=epochs, batch_size=16, warmup_epochs=1, classes_per_batch=2,
                           device="cpu", checkpoint=ckpt, progress=False)

    full = Trainer(build_method(name, **kw), cfg(3))
    full.fit(x, y)
    ckpt = str(tmp_path / "run.pt")
    # same 3-epoch schedule, interrupted after epoch 2: the runner is killed and restarted
    part = Trainer(build_method(name, **kw), cfg(3, ckpt))
    part.fit(x, y, stop_after=2)
    assert part.epoch == 2
    resumed = Trainer(build_method(name, seed=1, **kw), cfg(3, ckpt))  # another init: loaded over
    resumed.fit(x, y)
    assert resumed.step == full.step and resumed.epoch == 3
    for (k, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), k


def test_trainer_evaluates_with_knn_and_respects_the_budget():
    x, y = _tiny_data(32)
    cfg = TrainConfig(epochs=50, batch_size=16, budget_minutes=1e-9, device="cpu", progress=False)
    tr = Trainer(build_method("vicreg", **TINY), cfg)
    hist = tr.fit(x, y, x[:8], y[:8])
    assert tr.step == 1 and len(hist) == 1
    assert 0.0 <= hist[-1]["top1"] <= 100.0 and "top5" in hist[-1]


def test_lars_trust_ratio_is_clipped_at_the_global_rate():
    for lr, expected in [(1.0, 1 - 0.02), (0.01, 1 - 0.01)]:
        w = torch.nn.Parameter(torch.ones(2, 2))          # ||w|| = ||g|| = 2: local rate eta = 0.02
        w.grad = torch.ones(2, 2)
        LARS([w], lr=lr, eta=0.02, clip_lr=True).step()
        assert torch.allclose(w.detach(), torch.full((2, 2), expected))
        w = torch.nn.Parameter(torch.ones(2, 2))           # unclipped: the step is lr * eta * g
        w.grad = torch.ones(2, 2)
        LARS([w], lr=lr, eta=0.02).step()
        assert torch.allclose(w.detach(), torch.full((2, 2), 1 - lr * 0.02))
    b = torch.nn.Parameter(torch.ones(2))                 # excluded group: plain SGD
    b.grad = torch.ones(2)
    LARS([{"params": [b], "lars": False}], lr=0.5).step()
    assert torch.allclose(b.detach(), torch.full((2,), 0.5))


def test_core_library_does_not_import_ssl():
    import subprocess
    import sys
    code = "import sys, smt, smt.image, smt.knn, smt.cli; print('smt.ssl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
