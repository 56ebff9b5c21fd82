"""CARP (smt.ssl.carp): the loss on hand-made distributions, partitions, teacher, one step, resume."""
import math

import pytest

torch = pytest.importorskip("torch")

from _ssl_common import _one_thread, one_step_lowers_the_loss, resume_matches_an_uninterrupted_run  # noqa: E402,F401
from smt.ssl import build_method  # noqa: E402
from smt.ssl.carp import block_probs, consistency_loss, random_partition, uniformity_loss  # noqa: E402
from smt.ssl.optim import LARS, param_groups  # noqa: E402

TINY = dict(width=2, proj_hidden=16, carp_k=32, carp_block=8)



def test_identical_one_hot_assignments_give_zero_consistency():
    n_p, b, n_b = 3, 5, 4
    idx = torch.randint(0, n_b, (n_p, b), generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(idx, n_b).float()
    loss = consistency_loss([onehot, onehot], [onehot, onehot])
    eps = torch.finfo(torch.float32).eps
    assert float(loss) == pytest.approx(-math.log(1 - eps), abs=1e-6)
    # disagreeing one-hots hit the clamp: -log(eps)
    other = torch.nn.functional.one_hot((idx + 1) % n_b, n_b).float()
    assert float(consistency_loss([onehot, onehot], [other, other])) == pytest.approx(-math.log(eps), rel=1e-5)


def test_uniform_blocks_give_log_nb_consistency_and_zero_uniformity():
    n_p, b, n_b = 4, 6, 8
    u = torch.full((n_p, b, n_b), 1 / n_b)
    assert float(consistency_loss([u, u], [u, u])) == pytest.approx(math.log(n_b), rel=1e-6)
    assert float(uniformity_loss(torch.cat([u, u], dim=1))) == pytest.approx(0.0, abs=1e-6)


def test_collapsed_blocks_give_log_nb_uniformity():
    n_p, b, n_b = 4, 6, 8
    collapsed = torch.zeros(n_p, b, n_b)
    collapsed[..., 2] = 1.0
    assert float(uniformity_loss(collapsed)) == pytest.approx(math.log(n_b), rel=1e-5)
    # one-hot rows spread evenly over the block: p_bar uniform
    spread = torch.eye(n_b).expand(n_p, n_b, n_b)
    assert float(uniformity_loss(spread)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k, n_b", [(32, 8), (30, 8), (4096, 128)])
def test_every_partition_covers_np_times_nb_distinct_prototypes(k, n_b):
    g = torch.Generator().manual_seed(0)
    parts = [random_partition(k, n_b, g) for _ in range(5)]
    for p in parts:
        assert p.shape == (k // n_b, n_b)
        assert len(torch.unique(p)) == (k // n_b) * n_b and int(p.max()) < k
    assert not all(torch.equal(parts[0], p) for p in parts[1:])
    with pytest.raises(ValueError):
        random_partition(4, 8)


def test_block_probs_are_softmax_within_blocks():
    logits = torch.randn(3, 12)
    part = random_partition(12, 4, torch.Generator().manual_seed(1))
    p = block_probs(logits, part)
    assert p.shape == (3, 3, 4)
    assert torch.allclose(p.sum(-1), torch.ones(3, 3))
    assert torch.allclose(p[1, 2], torch.softmax(logits[2, part[1]], dim=0))


def test_no_gradient_reaches_the_teacher_and_the_ema_moves_it():
    m = build_method("carp", **TINY)
    loss, logs = m.training_loss(torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32),
                                 torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in m.target_backbone.parameters())
    assert all(p.grad is None for p in m.target_head.parameters())
    assert m.head.prototypes.grad is not None
    assert set(logs) == {"consistency", "uniformity", "block_entropy", "agreement_top1"}
    assert 0 <= logs["block_entropy"] <= math.log(8) + 1e-6
    t0 = m.target_head.prototypes.clone()
    with torch.no_grad():
        m.head.prototypes.add_(1.0)
    m.after_step(0.0)                                  # momentum 0.99: 1 % of the way
    assert torch.allclose(m.target_head.prototypes, t0 + 0.01, atol=1e-6)


def test_one_step_lowers_the_loss():
    m = build_method("carp", **TINY)
    before, after = one_step_lowers_the_loss(m, LARS(param_groups(m, 1e-6), lr=1.0, eta=0.02 / 0.3))
    assert after < before


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    resume_matches_an_uninterrupted_run(tmp_path, "carp", **TINY)
