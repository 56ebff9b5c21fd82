"""Homomorphic SSL (smt.ssl.hssl) on the C4-equivariant ResNet (smt.ssl.equivariant)."""
import pytest

torch = pytest.importorskip("torch")

from _ssl_common import _one_thread, one_step_lowers_the_loss, resume_matches_an_uninterrupted_run  # noqa: E402,F401
from smt.ssl import build_method  # noqa: E402
from smt.ssl.equivariant import P4Conv, P4ResNet18, rot90  # noqa: E402
from smt.ssl.hssl import draw_group_pairs, fibre_pairs, rotate_each  # noqa: E402
from smt.ssl.optim import LARS, param_groups  # noqa: E402

TINY = dict(p4_width=1, proj_hidden=8)



def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("train", [False, True])
def test_c4_network_is_equivariant_in_float64(train):
    torch.manual_seed(0)
    net = P4ResNet18(width=2).double().train(train)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        z = net.fibres(x)
        assert z.shape == (3, 16, 4)
        for k in (1, 2, 3):
            assert _rel(net.fibres(rot90(x, k)), torch.roll(z, k, dims=2)) < 1e-6
        assert _rel(net(rot90(x, 1)), net(x)) < 1e-6                      # invariant kNN features


def test_group_convolutions_rotate_maps_and_roll_fibres():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    lift = P4Conv(3, 2, 3, lifting=True).double()
    gconv = P4Conv(2, 2, 3, lifting=False).double()
    with torch.no_grad():
        y = gconv(lift(x))
        y_rot = gconv(lift(rot90(x, 1)))
    assert y.shape == (2, 2, 4, 9, 9)
    assert _rel(y_rot, rot90(torch.roll(y, 1, dims=2), 1)) < 1e-12


def test_unstructured_control_is_not_equivariant():
    torch.manual_seed(0)
    net = P4ResNet18(width=2, tied=False).double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(net.fibres(rot90(x, 1)), torch.roll(net.fibres(x), 1, dims=2)) > 0.1
    assert sum(p.numel() for p in net.parameters()) > sum(p.numel() for p in P4ResNet18(width=2).parameters())


@pytest.mark.parametrize("train", [False, True])
def test_assl_loss_equals_hssl_loss_for_fixed_group_elements(train):
    m = build_method("hssl", **TINY).double().train(train)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g1, g2 = draw_group_pairs(6, torch.Generator().manual_seed(1))
    assert bool((g1 != g2).all())
    with torch.no_grad():
        a = m.assl_loss(x, g1, g2)
        h = m.hssl_loss(x, (-g1) % 4, (-g2) % 4)   # the identity fibre of rot(x, g) is fibre -g of f(x)
    assert float(a) == pytest.approx(float(h), rel=1e-5)   # nt_xent runs in float32
    with torch.no_grad():                           # other fibres: another loss (far beyond float32 rounding)
        assert abs(float(m.hssl_loss(x, g1, g2)) - float(a)) > 1e-4


def test_helpers():
    z = torch.arange(24.0).view(2, 3, 4)
    u, v = fibre_pairs(z, torch.tensor([0, 3]), torch.tensor([1, 2]))
    assert torch.equal(u, z[[0, 1], :, [0, 3]]) and torch.equal(v, z[[0, 1], :, [1, 2]])
    x = torch.randn(3, 1, 4, 4)
    r = rotate_each(x, torch.tensor([0, 1, 3]))
    assert torch.equal(r[0], x[0]) and torch.equal(r[1], rot90(x[1], 1)) and torch.equal(r[2], rot90(x[2], 3))


@pytest.mark.parametrize("name", ["hssl", "assl", "hssl_unstructured"])
def test_one_step_lowers_the_loss(name):
    m = build_method(name, **TINY)
    assert m.name == name
    before, after = one_step_lowers_the_loss(m, LARS(param_groups(m, 1e-5), lr=1.0, eta=0.02 / 0.4), size=16)
    assert after < before


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    resume_matches_an_uninterrupted_run(tmp_path, "hssl", **TINY)
