"""SimCLR (Chen et al., ICML 2020): contrastive learning with the NT-Xent loss.

Hyper-parameters of the SMT paper's appendix (CIFAR, ResNet-18): batch 256,
LARS, lr 0.4, weight decay 1e-5, 10 warmup epochs then cosine, temperature
0.2, projector 2048 -> 256.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SSLMethod, mlp

__all__ = ["SimCLR", "nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross entropy over the 2B projected views.

    Each of the ``2B`` embeddings must pick its other view among the ``2B - 1``
    others by cosine similarity / ``temperature``.

    Parameters
    ----------
    z1, z2 : torch.Tensor, shape (B, D)
        Projections of the two views; row ``i`` of both is the same image.
    temperature : float

    Returns
    -------
    torch.Tensor, scalar
        Mean loss; for orthonormal ``z1 == z2`` it is exactly
        ``log(1 + (2B - 2) exp(-1 / temperature))``.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)                 # (2B, D)
    b = len(z1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))                                  # never your own view
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLR(SSLMethod):
    """SimCLR: backbone -> projector (``out_dim -> 2048 -> 256``) -> NT-Xent.

    Parameters
    ----------
    backbone : nn.Module
    proj_hidden, proj_out : int, default 2048, 256
    temperature : float, default 0.2
    """

    name = "simclr"
    hparams = {"optimizer": "lars", "lr": 0.4, "weight_decay": 1e-5, "warmup_epochs": 10}

    def __init__(self, backbone, proj_hidden: int = 2048, proj_out: int = 256, temperature: float = 0.2):
        super().__init__(backbone)
        self.projector = mlp([backbone.out_dim, proj_hidden, proj_out])
        self.temperature = temperature

    def training_loss(self, x1, x2, gen=None):
        z = self.projector(self.backbone(torch.cat([x1, x2])))            # one pass: BN sees both views
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"nt_xent": float(loss.detach())}
