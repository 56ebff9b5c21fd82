"""SimCLR (Chen et al., ICML 2020): contrastive learning with the NT-Xent loss.

Hyper-parameters of the SMT paper's appendix (CIFAR, ResNet-18): batch 256,
LARS, lr 0.4, weight decay 1e-5, 10 warmup epochs then cosine, temperature
0.2, projector 2048 -> 256; augmentations: solo-learn's SimCLR recipe
(``"simclr"`` in :data:`smt.ssl.augment.RECIPES`: strong colour jitter
0.8/0.8/0.8/0.2, blur, no solarisation).

Choices that differ from solo-learn (``ssl-part2.md`` A3-A5), not measured:

* the projector is Linear-BN-ReLU-Linear (the original TF SimCLR head has BN;
  solo-learn's is Linear-ReLU-Linear);
* both views go through the network in one concatenated batch, so BatchNorm
  statistics are pooled over the two views (as TF SimCLR; solo-learn runs one
  forward pass per view);
* weight decay 1e-5 as credited to the SMT paper's appendix (solo-learn's
  ``simclr.yaml``: 1e-4).

:class:`SimCLRAdamW` is the SimCLR of ManifoldCLR's harness (AdamW,
temperature 0.5, projector 1024 -> 128), the baseline ManifoldCLR must be
compared with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SSLMethod, mlp

__all__ = ["SimCLR", "SimCLRAdamW", "nt_xent"]


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
    augment_recipe = "simclr"

    def __init__(self, backbone, proj_hidden: int = 2048, proj_out: int = 256, temperature: float = 0.2):
        super().__init__(backbone)
        self.projector = mlp([backbone.out_dim, proj_hidden, proj_out])
        self.temperature = temperature

    def training_loss(self, x1, x2, gen=None):
        z = self.projector(self.backbone(torch.cat([x1, x2])))            # one pass: BN sees both views
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"nt_xent": float(loss.detach())}


class SimCLRAdamW(SimCLR):
    """SimCLR as configured in ManifoldCLR's code (``config/simclr_cifar10.yaml``).

    AdamW lr 3e-3 at batch 512 (given here as 1.5e-3 for batch 256, which the
    :class:`~smt.ssl.base.Trainer`'s linear rule scales back to 3e-3 at 512),
    weight decay 1e-5, 10 warmup epochs then cosine, temperature 0.5,
    projector ``out_dim -> 1024 -> 128``, ManifoldCLR's augmentations.
    """

    name = "simclr_adamw"
    hparams = {"optimizer": "adamw", "lr": 1.5e-3, "weight_decay": 1e-5, "warmup_epochs": 10}
    augment_recipe = "manifoldclr"

    def __init__(self, backbone, proj_hidden: int = 1024, proj_out: int = 128, temperature: float = 0.5):
        super().__init__(backbone, proj_hidden, proj_out, temperature)
