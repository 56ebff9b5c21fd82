"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): variance-invariance-covariance regularisation.

Hyper-parameters of the SMT paper's appendix (CIFAR, ResNet-18): batch 256,
LARS, lr 0.3, weight decay 1e-4, 10 warmup epochs then cosine, projector
2048-2048, loss weights invariance 25, variance 25, covariance 1;
augmentations: solo-learn's VICReg recipe (``"vicreg"`` in
:data:`smt.ssl.augment.RECIPES`: crop scale 0.2-1, solarisation 0.1 on both
views).

Both views go through the network in one concatenated batch, so BatchNorm
statistics are pooled over the two views; solo-learn and the official VICReg
run one forward pass per view (``ssl-part2.md`` A5; not measured).  The
variance term adds the two views' hinges as solo-learn does (the official
code averages them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SSLMethod, mlp

__all__ = ["VICReg", "invariance_loss", "variance_loss", "covariance_loss", "vicreg_loss"]


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the two views' embeddings ``(B, D)``."""
    return F.mse_loss(z1, z2)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Hinge ``mean_d relu(gamma - sqrt(Var(z_d) + eps))`` on each dimension's std over the batch.

    Parameters
    ----------
    z : torch.Tensor, shape (B, D)
    gamma : float, default 1
        Target standard deviation.
    eps : float, default 1e-4
    """
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances over the batch, divided by ``D``.

    Parameters
    ----------
    z : torch.Tensor, shape (B, D)
    """
    b, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (b - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_loss(z1, z2, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0):
    """Weighted sum of the three terms (variance and covariance on both views).

    Returns
    -------
    loss : torch.Tensor, scalar
    terms : dict of str to float
    """
    z1, z2 = z1.float(), z2.float()
    inv = invariance_loss(z1, z2)
    var = variance_loss(z1) + variance_loss(z2)
    cov = covariance_loss(z1) + covariance_loss(z2)
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": float(inv.detach()), "variance": float(var.detach()),
                  "covariance": float(cov.detach())}


class VICReg(SSLMethod):
    """VICReg: backbone -> expander (``out_dim -> 2048 -> 2048 -> 2048``, solo-learn's 3 layers) -> loss.

    Parameters
    ----------
    backbone : nn.Module
    proj_hidden, proj_out : int, default 2048, 2048
    sim_weight, var_weight, cov_weight : float, default 25, 25, 1
    """

    name = "vicreg"
    hparams = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-4, "warmup_epochs": 10}
    augment_recipe = "vicreg"

    def __init__(self, backbone, proj_hidden: int = 2048, proj_out: int = 2048, sim_weight: float = 25.0,
                 var_weight: float = 25.0, cov_weight: float = 1.0):
        super().__init__(backbone)
        self.projector = mlp([backbone.out_dim, proj_hidden, proj_hidden, proj_out])
        self.weights = (sim_weight, var_weight, cov_weight)

    def training_loss(self, x1, x2, gen=None):
        z1, z2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        return vicreg_loss(z1, z2, *self.weights)
