"""Part-1 fixes of the deep SSL baselines (ssl-part2.md section 1): LARS step, recipes, MSN logits, sampler tails."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smt.ssl import TrainConfig, Trainer, build_method  # noqa: E402
from smt.ssl.augment import RECIPES, gaussian_blur, recipe  # noqa: E402
from smt.ssl.base import cosine_momentum  # noqa: E402
from smt.ssl.optim import LARS, clip_group_gradients, lars_eta  # noqa: E402
from smt.ssl.sampler import ClassBatchSampler  # noqa: E402
from _ssl_common import _one_thread  # noqa: E402,F401  (autouse: one torch thread)



def _lars_step(mode: str, lr: float, peak: float, eta: float = 0.02) -> torch.Tensor:
    w = torch.nn.Parameter(torch.full((4,), 1.0))   # ||w|| = 2
    w.grad = torch.full((4,), 0.5)                  # ||g|| = 1: local rate eta * 2 = 0.04
    e, clip = lars_eta(mode, eta, peak)
    LARS([w], lr=lr, eta=e, clip_lr=clip).step()
    return 1.0 - w.detach()


def test_scaled_lars_equals_the_clipped_step_at_the_peak_where_the_clip_is_inactive():
    peak = 0.4                                      # local rate 0.04 < 0.4: solo-learn's clip inactive
    clipped = _lars_step("clipped", peak, peak)
    assert torch.allclose(_lars_step("scaled", peak, peak), clipped)
    assert torch.allclose(clipped, torch.full((4,), 0.04 * 0.5))
    # part 1's unclipped eta: lr times that step (0.4x for SimCLR)
    assert torch.allclose(_lars_step("unscaled", peak, peak), peak * clipped)
    # along the schedule the scaled step follows lr / peak
    assert torch.allclose(_lars_step("scaled", 0.1, peak), 0.25 * clipped)
    with pytest.raises(ValueError):
        lars_eta("nope", 0.02, 0.4)


def test_clipped_lars_clears_the_momentum_when_the_warmup_ends():
    cfg = TrainConfig(epochs=10, batch_size=16, lars_mode="clipped", device="cpu", progress=False)
    tr = Trainer(build_method("simclr", width=2, proj_hidden=8), cfg)
    assert tr.opt.defaults["clip_lr"] and tr.opt.defaults["eta"] == 0.02
    p = tr.opt.param_groups[0]["params"][0]
    tr.opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    tr._set_lr(0.05)                                 # inside the 10 % warmup: kept
    assert "momentum_buffer" in tr.opt.state[p]
    tr._set_lr(0.1)
    assert "momentum_buffer" not in tr.opt.state[p] and tr._warm
    scaled = Trainer(build_method("simclr", width=2, proj_hidden=8),
                     TrainConfig(epochs=10, batch_size=16, lars_mode="scaled", device="cpu", progress=False))
    assert not scaled.opt.defaults["clip_lr"] and scaled.opt.defaults["eta"] == pytest.approx(0.02 / (0.4 * 16 / 256))
    default = Trainer(build_method("simclr", width=2, proj_hidden=8),
                      TrainConfig(epochs=10, batch_size=16, device="cpu", progress=False))
    assert not default.opt.defaults["clip_lr"] and default.opt.defaults["eta"] == 0.02   # unscaled: measured better


def test_group_lr_scale_and_gradient_clipping():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([{"params": [a], "clip_grad": 0.1}, {"params": [b]}], lr=1.0)
    a.grad, b.grad = torch.full((3,), 10.0), torch.full((4,), 10.0)
    clip_group_gradients(opt)
    assert float(a.grad.norm()) == pytest.approx(0.1, rel=1e-4) and float(b.grad.norm()) == pytest.approx(20.0)
    clip_group_gradients(opt, default=1.0)           # groups without their own clip take the default
    assert float(b.grad.norm()) == pytest.approx(1.0, rel=1e-4)
    tr = Trainer(build_method("manifoldclr", width=2, proj_hidden=8, n_operators=4, operator_block=4,
                              encoder_hidden=8), TrainConfig(epochs=10, device="cpu", progress=False))
    tr._set_lr(0.5)
    lrs = {g.get("lr_scale", 1.0): g["lr"] for g in tr.opt.param_groups}
    assert len(lrs) == 3 and all(lr == pytest.approx(s * lrs[1.0]) for s, lr in lrs.items())


def test_per_method_recipes():
    assert RECIPES["simclr"].brightness == 0.8 and RECIPES["simclr"].hue == 0.2
    assert RECIPES["simclr"].blur_prob == (0.5, 0.5) and RECIPES["simclr"].solarize_prob == (0.0, 0.0)
    assert RECIPES["vicreg"].min_scale == 0.2 and RECIPES["vicreg"].solarize_prob == (0.1, 0.1)
    assert RECIPES["asymmetric"].solarize_prob == (0.0, 0.2)
    for name, expected in [("simclr", "simclr"), ("vicreg", "vicreg"), ("msn", "asymmetric")]:
        kw = dict(vit_dim=8, vit_depth=1, vit_heads=2, n_prototypes=4) if name == "msn" else dict(width=2)
        tr = Trainer(build_method(name, proj_hidden=8, **kw), TrainConfig(device="cpu", progress=False))
        assert tr.augment.name == expected
    tr = Trainer(build_method("simclr", width=2, proj_hidden=8),
                 TrainConfig(device="cpu", progress=False, augment="asymmetric"))
    assert tr.augment.name == "asymmetric"
    with pytest.raises(ValueError):
        recipe("nope")
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    v1, v2 = RECIPES["simclr"](x, torch.Generator().manual_seed(0))
    assert v1.shape == (6, 3, 32, 32) and torch.isfinite(v2).all()


def test_gaussian_blur_keeps_constant_images_and_smooths_noise():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0, gen=g), flat, atol=1e-6)
    noise = torch.rand(2, 3, 16, 16, generator=g)
    out = gaussian_blur(noise, 1.0, sigma=(1.5, 2.0), gen=g)
    assert out.std() < 0.6 * noise.std()
    assert torch.equal(gaussian_blur(noise, 0.0, gen=g), noise)


def test_msn_prototype_logits_are_float32_under_autocast():
    m = build_method("msn", vit_dim=8, vit_depth=1, vit_heads=2, proj_hidden=8, n_prototypes=4)
    z = torch.randn(5, 256)
    ref = m._logits(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m._logits(z)
    assert got.dtype == torch.float32 and torch.allclose(got, ref)


def test_cosine_momentum():
    assert cosine_momentum(0.0, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(1.0, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(0.5, 0.99) == pytest.approx(0.995)


@pytest.mark.parametrize("k", [1, 2])
def test_class_sampler_never_emits_a_batch_too_small_for_batchnorm(k):
    labels = np.repeat(np.arange(4), [33, 17, 49, 65])   # counts = 1 (mod 16): tails of one image with K = 1
    s = ClassBatchSampler(labels, batch_size=16, classes_per_batch=k, seed=0)
    assert s.min_batch_size == 8
    for epoch in range(3):
        batches = s.batches(epoch)
        assert min(len(b) for b in batches) >= 8 and max(len(b) for b in batches) < 16 + 8
        assert all(len(np.unique(labels[b])) == k for b in batches)
        if k == 1:                                        # merged, never dropped: every image is seen
            assert sorted(np.concatenate(batches).tolist()) == list(range(len(labels)))
