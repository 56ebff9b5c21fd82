"""MSN and PMSN: masked siamese networks with a uniform or a power-law cluster prior.

MSN (Assran et al., ECCV 2022) matches the prototype assignment of a masked
*anchor* view to the sharpened assignment of an unmasked *target* view
encoded by an EMA copy of the network, and adds a mean-entropy maximisation
("me-max") term: the batch-mean assignment ``p_bar`` should have maximal
entropy, i.e. be close to uniform over the prototypes.  "The hidden uniform
cluster prior in self-supervised learning" (Assran et al., ICLR 2023) writes
that term as ``KL(p_bar || prior)`` with a uniform prior (``KL(p_bar || U) =
log K - H(p_bar)``, the same gradient) and proposes PMSN: the same loss with a
power-law prior ``prior_k ∝ k ** -tau`` over the prototypes, which suits
long-tailed data.

What is scaled down from the papers (ViT-S/16 ... ViT-L/7 on ImageNet):

* backbone: ViT-Tiny (dim 192, depth 12, 3 heads), patch 4 on 32x32 images;
  smaller ``dim`` / ``depth`` can be passed for CPU budgets;
* views: two random views per image, each masked as the anchor of the other
  (symmetrised); the papers use 1 random + 10 focal anchor views against one
  target view;
* masking: random patch dropping only (ratio 0.3), no focal masking;
* prototypes: 1024 by default (the papers: 1024);
* no Sinkhorn normalisation of the targets (MSN's released ViT-S/16 config
  enables it, ``use_sinkhorn: true``; it imposes a uniform prior of its own,
  which PMSN is meant to replace);
* kNN features: the online encoder's [CLS] token (the papers: the EMA
  target encoder; see the comment on ``features``);
* optimiser: AdamW lr 1e-3 (batch 256 scaled), weight decay 0.04 fixed (the
  paper ramps it to 0.4), 10 warmup epochs, EMA momentum 0.996 -> 1.

Further differences from facebookresearch/msn, none of them measured
(``ssl-part2.md`` A9-A13, A17):

* projector: 2 layers, Linear-BN-ReLU-Linear (2048 -> 256), the project's
  shared :func:`~smt.ssl.base.mlp`; msn's ``init_model`` has 3,
  fc-BN-GELU-fc-BN-GELU-fc (hidden 2048, out 256);
* the prototypes are in the decayed AdamW group (weight decay 0.04); msn puts
  them in a group of their own without weight decay.  Over long runs decay
  shrinks their norm, and so raises their effective step; negligible at
  CPU budgets;
* the EMA momentum rises along a half *cosine* from 0.996 to 1 over the run
  (:func:`~smt.ssl.base.cosine_momentum`); msn raises it *linearly* from
  0.996 over 1.25x the total steps, ending near 0.9992;
* no gradient clipping by default (msn: ``clip_grad: 3.0``); pass
  ``hparams={"clip_grad": 3.0, ...}`` in a subclass to clip as msn does;
* the prototype logits are computed in float32 with autocast off (msn:
  fp32 throughout): sharpening at an effective T 0.025 turns bf16 rounding
  of the cosines (~0.004) into up to ~0.16 nats in the targets;
* PMSN's regulariser is ``KL(p_bar || prior)``; lightly's ``PMSNLoss``
  computes ``KL(prior || p_bar)``.  Both vanish at ``p_bar = prior``; with a
  uniform prior this direction is exactly MSN's me-max, while the reverse
  one penalises idle prototypes far harder.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SSLMethod, cosine_momentum, ema_update, mlp

__all__ = ["MSN", "PMSN", "power_law_prior", "mean_entropy", "prior_kl", "sharpen", "msn_loss"]


def power_law_prior(n_prototypes: int, tau: float) -> torch.Tensor:
    """``prior_k = k ** -tau / sum_j j ** -tau`` for ``k = 1 .. n_prototypes`` (``tau = 0``: uniform).

    Returns
    -------
    torch.Tensor, float32, shape (n_prototypes,), sums to 1.
    """
    k = torch.arange(1, n_prototypes + 1, dtype=torch.float64)
    p = k ** -float(tau)
    return (p / p.sum()).float()


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy ``H(p_bar)`` of the batch-mean assignment of ``probs`` ``(B, K)``; at most ``log K``."""
    p_bar = probs.mean(dim=0)
    return -(p_bar * torch.log(p_bar + 1e-12)).sum()


def prior_kl(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``KL(p_bar || prior)`` of the batch-mean assignment; with a uniform prior, ``log K - H(p_bar)``."""
    p_bar = probs.mean(dim=0)
    return (p_bar * (torch.log(p_bar + 1e-12) - torch.log(prior))).sum()


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p ** (1 / T)`` renormalised per row (MSN's target sharpening)."""
    p = probs ** (1.0 / temperature)
    return p / p.sum(dim=1, keepdim=True)


def msn_loss(anchor_logits: torch.Tensor, target_probs: torch.Tensor, prior: torch.Tensor,
             reg_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Cross entropy to the (already sharpened) targets plus ``reg_weight * KL(p_bar || prior)``.

    Parameters
    ----------
    anchor_logits : torch.Tensor, shape (B, K)
        Cosine similarities to the prototypes over the anchor temperature.
    target_probs : torch.Tensor, shape (B, K)
        Sharpened target assignments (no gradient).
    prior : torch.Tensor, shape (K,)
    reg_weight : float, default 1
    """
    log_p = F.log_softmax(anchor_logits.float(), dim=1)
    ce = -(target_probs * log_p).sum(dim=1).mean()
    reg = prior_kl(log_p.exp(), prior)
    return ce + reg_weight * reg, {"ce": float(ce.detach()), "prior_kl": float(reg.detach())}


class MSN(SSLMethod):
    """Masked Siamese Networks with the uniform prior (mean-entropy maximisation).

    Parameters
    ----------
    backbone : ViT
        Must accept ``mask_ratio`` and ``generator`` (:class:`~smt.ssl.backbones.ViT`).
    n_prototypes : int, default 1024
    proj_hidden, proj_out : int, default 2048, 256
    mask_ratio : float, default 0.3
    anchor_temperature, target_temperature : float, default 0.1, 0.025
        The target is sharpened by ``T = target / anchor = 0.25``.
    reg_weight : float, default 1
    ema : (float, float), default (0.996, 1.0)
        Target momentum, raised along a cosine as training progresses.
    prior_tau : float, default 0.0
        Power-law exponent of the prior (0: uniform, MSN).
    """

    name = "msn"
    hparams = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.04, "warmup_epochs": 10}

    def __init__(self, backbone, n_prototypes: int = 1024, proj_hidden: int = 2048, proj_out: int = 256,
                 mask_ratio: float = 0.3, anchor_temperature: float = 0.1, target_temperature: float = 0.025,
                 reg_weight: float = 1.0, ema=(0.996, 1.0), prior_tau: float = 0.0):
        super().__init__(backbone)
        self.projector = mlp([backbone.out_dim, proj_hidden, proj_out])
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, proj_out) / math.sqrt(proj_out))
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("prior", power_law_prior(n_prototypes, prior_tau))
        self.mask_ratio, self.reg_weight, self.ema = mask_ratio, reg_weight, ema
        self.anchor_t, self.sharpen_t = anchor_temperature, target_temperature / anchor_temperature

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        # float32, autocast off: the target sharpening (T 0.025) amplifies bf16 rounding of the cosines
        with torch.autocast(z.device.type, enabled=False):
            return F.normalize(z.float(), dim=1) @ F.normalize(self.prototypes.float(), dim=1).T / self.anchor_t

    def training_loss(self, x1, x2, gen=None):
        x = torch.cat([x1, x2])
        anchors = self._logits(self.projector(self.backbone(x, self.mask_ratio, gen)))
        with torch.no_grad():
            self.target_backbone.train(self.training)
            self.target_projector.train(self.training)
            t = F.softmax(self._logits(self.target_projector(self.target_backbone(x))).float(), dim=1)
            t1, t2 = sharpen(t, self.sharpen_t).chunk(2)
            targets = torch.cat([t2, t1])    # the anchor of view 1 predicts the target of view 2
        return msn_loss(anchors, targets, self.prior, self.reg_weight)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = cosine_momentum(progress, *self.ema)
        ema_update(self.backbone, self.target_backbone, m)
        ema_update(self.projector, self.target_projector, m)

    # features(): the online backbone's [CLS] feature (SSLMethod's default).  The papers evaluate the
    # EMA target encoder, which after 1000s of steps is the same network; at the short budgets of
    # this project's CPU runs (~100 steps, momentum >= 0.996) the target has barely left its
    # initialisation, so scoring it would measure the random init.


class PMSN(MSN):
    """MSN with a power-law prior ``prior_k ∝ k ** -tau`` over the prototypes (default ``tau = 0.25``)."""

    name = "pmsn"

    def __init__(self, backbone, prior_tau: float = 0.25, **kw):
        super().__init__(backbone, prior_tau=prior_tau, **kw)
