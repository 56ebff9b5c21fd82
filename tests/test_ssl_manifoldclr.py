"""ManifoldCLR (smt.ssl.manifoldclr): operators, Laplace sampling and KL, max-ELBO, one step, resume."""
import math

import pytest

torch = pytest.importorskip("torch")

from _ssl_common import _one_thread, one_step_lowers_the_loss, resume_matches_an_uninterrupted_run  # noqa: E402,F401
from smt.ssl import build_method  # noqa: E402
from smt.ssl.manifoldclr import (LieOperators, laplace_kl, laplace_noise, reparameterize,  # noqa: E402
                                 select_max_elbo)

TINY = dict(width=2, proj_hidden=8, n_operators=4, operator_block=4, encoder_hidden=8, n_samples=3)



def test_zero_coefficients_give_the_identity():
    torch.manual_seed(0)
    ops = LieOperators(dim=16, n_operators=5, block=8)
    assert ops.psi.shape == (2, 5, 8, 8)
    t = ops.matrices(torch.zeros(3, 5))
    assert t.shape == (3, 2, 8, 8) and torch.equal(t, torch.eye(8).expand(3, 2, 8, 8))
    z = torch.randn(3, 16)
    assert torch.allclose(ops(z, torch.zeros(3, 5)), z)
    with pytest.raises(ValueError):
        LieOperators(dim=10, n_operators=2, block=4)


def test_stable_init_is_near_orthogonal():
    torch.manual_seed(0)
    ops = LieOperators(dim=32, n_operators=32, block=16)
    t = ops.matrices(torch.rand(10, 32) * 2 - 1)                     # (10, 2, 16, 16)
    gram = t.transpose(-1, -2) @ t
    assert (gram - torch.eye(16)).abs().max() < 1e-2
    assert (t - torch.eye(16)).abs().max() > 0.1                     # and not the identity: rotations


def test_threshold_zeros_follow_the_laplace_tail():
    g = torch.Generator().manual_seed(0)
    n, b, zeta = 200_000, 0.01, 0.01
    mu = torch.full((n,), 0.05, requires_grad=True)
    log_b = torch.full((n,), math.log(b), requires_grad=True)
    u = laplace_noise((n,), g)
    c = reparameterize(mu, log_b, u, zeta)
    assert float((c == 0).float().mean()) == pytest.approx(1 - math.exp(-zeta / b), abs=0.005)
    eps = -b * torch.sign(u) * torch.log(1 - 2 * u.abs())
    keep = eps.abs() > zeta
    assert torch.allclose(c[keep], 0.05 + torch.sign(eps[keep]) * (eps[keep].abs() - zeta), atol=1e-6)
    c.sum().backward()                                               # straight through: d c / d mu = 1
    assert torch.equal(mu.grad, torch.ones(n)) and torch.allclose(log_b.grad, eps, atol=1e-6)
    assert torch.allclose(reparameterize(mu, log_b, u, 0.0), mu + eps, atol=1e-6)   # no threshold


def test_laplace_kl_is_zero_on_itself_and_matches_monte_carlo():
    mu, log_b = torch.tensor([0.3, -1.0]), torch.log(torch.tensor([0.5, 2.0]))
    assert torch.allclose(laplace_kl(mu, log_b, mu, log_b), torch.zeros(2), atol=1e-7)
    mu_p, log_b_p = torch.tensor([-0.2, 0.5]), torch.log(torch.tensor([1.2, 0.7]))
    q = torch.distributions.Laplace(mu, log_b.exp())
    p = torch.distributions.Laplace(mu_p, log_b_p.exp())
    torch.manual_seed(0)
    x = q.sample((400_000,))
    mc = (q.log_prob(x) - p.log_prob(x)).mean(0)
    assert torch.allclose(laplace_kl(mu, log_b, mu_p, log_b_p), mc, rtol=0.02, atol=0.01)


def test_max_elbo_returns_the_argmin_sample():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, 7, 3, generator=g)
    err = torch.rand(5, 7, generator=g)
    best = select_max_elbo(u, err)
    for i in range(7):
        assert torch.equal(best[i], u[int(err[:, i].argmin()), i])
    # in the method: the kept coefficients have the smallest transport error of the J draws
    m = build_method("manifoldclr", **TINY)
    m.progress.fill_(1.0)
    z0, z1 = torch.randn(6, 16), torch.randn(6, 16)
    mu, log_b = torch.zeros(6, 4), torch.full((6, 4), math.log(0.5))
    c = m._coefficients(mu, log_b, z0, z1, torch.Generator().manual_seed(3))
    draws = reparameterize(mu, log_b, laplace_noise((3, 6, 4), torch.Generator().manual_seed(3)), m.zeta)
    errs = (m.operators(z0, draws) - z1).pow(2).sum(-1)
    assert torch.allclose((m.operators(z0, c) - z1).pow(2).sum(-1), errs.min(0).values, atol=1e-5)


@pytest.mark.parametrize("name", ["manifoldclr", "simclr_adamw"])
def test_one_step_lowers_the_loss(name):
    kw = TINY if name == "manifoldclr" else dict(width=2, proj_hidden=8)
    m = build_method(name, **kw)
    before, after = one_step_lowers_the_loss(m, torch.optim.AdamW(m.param_groups(0.0), lr=1e-3))
    assert after < before


def test_trainer_groups_follow_the_code():
    m = build_method("manifoldclr", **TINY)
    groups = m.param_groups(1e-5)
    psi = [g for g in groups if g.get("clip_id") == "psi"][0]
    assert psi["params"] == [m.operators.psi] and psi["clip_grad"] == 0.1 and psi["weight_decay"] == 1e-3
    enc = [g for g in groups if g.get("clip_id") == "encoder"]
    assert sum(len(g["params"]) for g in enc) == len(list(m.encoder.parameters()))
    assert all(g["clip_grad"] == 1.0 and g["lr_scale"] == pytest.approx(1 / 30) for g in enc)
    n_all = sum(len(g["params"]) for g in groups)
    assert n_all == len([p for p in m.parameters() if p.requires_grad])


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    resume_matches_an_uninterrupted_run(tmp_path, "manifoldclr", elbo_start=0.3, **TINY)


def test_posterior_learns_the_coefficients_of_known_operators():
    # the operator fit's inference path (encoder -> reparameterisation -> T(c)) on synthetic pairs
    # z1 = T_true(c) z0; without the threshold, 150 AdamW steps bring the transport error far below
    # the identity's (with zeta 0.01 at the hyper-prior's scale 0.01, 63 % of the coefficients are
    # zero whatever mu is, and this short fit does not get there: RESULTS.md, part 2)
    from smt.ssl.manifoldclr import CoefficientEncoder
    torch.manual_seed(0)
    ops = LieOperators(dim=16, n_operators=4, block=4).requires_grad_(False)
    z0 = torch.randn(256, 16)
    c_true = 0.05 * torch.randn(256, 4)
    with torch.no_grad():
        z1 = ops(z0, c_true)
    enc = CoefficientEncoder(16, 4, hidden=32)
    opt = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        mu, log_b = enc.posterior(z0, z1)
        err = torch.nn.functional.mse_loss(ops(z0, reparameterize(mu, log_b, laplace_noise(mu.shape, g), 0.0)), z1)
        opt.zero_grad()
        err.backward()
        opt.step()
    assert float(err.detach()) < 0.2 * float(torch.nn.functional.mse_loss(z0, z1))
