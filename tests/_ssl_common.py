"""Shared checks of the deep SSL method tests (tests/test_ssl_*.py): one step, checkpoint resume."""
import numpy as np
import pytest
import torch

from smt.ssl import TrainConfig, Trainer, build_method


@pytest.fixture(autouse=True)
def _one_thread():
    """Autouse in every module that imports it: one torch thread (tiny networks gain nothing from more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_data(n=48, size=32):
    """``n`` uint8 images (n, size, size, 3) of 4 classes that differ in brightness, and their labels."""
    g = np.random.default_rng(0)
    y = np.arange(n) % 4
    x = (g.integers(0, 60, (n, size, size, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    return x, y


def one_step_lowers_the_loss(method, opt, n=16, size=32, gen_seed=0) -> tuple[float, float]:
    """Loss of a fixed batch before and after one optimiser step (the loss's random draws replayed)."""
    method.train()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)
    loss0, _ = method.training_loss(x1, x2, torch.Generator().manual_seed(gen_seed))
    opt.zero_grad()
    loss0.backward()
    opt.step()
    loss1, _ = method.training_loss(x1, x2, torch.Generator().manual_seed(gen_seed))
    return float(loss0.detach()), float(loss1.detach())


def resume_matches_an_uninterrupted_run(tmp_path, name, **kw):
    """A 3-epoch run killed after epoch 2 and resumed equals the uninterrupted run, bit for bit."""
    x, y = tiny_data()

    def cfg(ckpt=None):
        return TrainConfig(epochs=3, batch_size=16, warmup_epochs=1, device="cpu", checkpoint=ckpt,
                           progress=False)

    full = Trainer(build_method(name, **kw), cfg())
    full.fit(x, y)
    ckpt = str(tmp_path / "run.pt")
    Trainer(build_method(name, **kw), cfg(ckpt)).fit(x, y, stop_after=2)
    resumed = Trainer(build_method(name, **{**kw, "seed": 1}), cfg(ckpt))   # another init: loaded over
    resumed.fit(x, y)
    assert resumed.step == full.step and resumed.epoch == 3
    assert resumed.step_losses == full.step_losses
    for (k, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), k
