"""CARP (Silva & Ramírez Rivera, NeurIPS 2023): consistent assignment of views over random partitions.

A student network and its EMA teacher map each view to logits over ``K``
prototypes.  Every step the prototypes are split at random into ``N_P``
blocks of ``N_B`` (the code's ``partition_size``); within each block the
logits become a distribution over its ``N_B`` prototypes.  The loss has two
terms, both of weight 1 (``modules/carp_loss.py`` of sthalles/carp at
``c9b068b4``):

* consistency: ``-log <P_v, Q_u>`` for the student view ``v`` and the
  teacher view ``u != v``, averaged over blocks, images and view pairs, where
  ``<P, Q>`` is the probability that the two views pick the same prototype of
  the block (clamped to ``[eps, 1 - eps]``);
* uniformity: ``KL(p_bar_b || Uniform(N_B))`` averaged over blocks, where
  ``p_bar_b`` is the block distribution averaged over all student *and*
  teacher rows (the teacher rows are constants), which keeps every block in
  use and so prevents collapse.

Model as in the code: a 3-layer head (Linear-BN-GELU, Linear-BN-GELU,
Linear to a 256-d bottleneck) then weight-normalised prototypes with the gain
fixed to 1, so the logits are ``<x, w_k / ||w_k||>``: the bottleneck ``x`` is
not normalised and there is no temperature (the network sets the sharpness
through ``||x||``).  The teacher is an EMA of the whole student, momentum
0.99 -> 1 along a cosine.

Scaled to CIFAR (no official CIFAR config exists; ``ssl-part2.md`` B1):

* K = 4096 prototypes (solo-learn's DINO CIFAR config), N_B = 128, so N_P =
  32 (ImageNet: 65536 / 512 / 128).  N_B stays well below the 4B rows (1024 at
  batch 256) that estimate ``p_bar`` every step;
* head ``512 -> 2048 -> 2048 -> 256``, on the CIFAR ResNet-18;
* two 32-px views, the ``"carp"`` recipe (the code's two global crops: scale
  0.2-1, blur 1.0 / 0.1, solarisation 0 / 0.2); no local crops;
* LARS as solo-learn's DINO CIFAR config: lr 0.3 x batch / 256, weight decay
  1e-6, eta 0.02 (in the project's LARS form, ``--lars-mode``; solo-learn
  clips), 1-D parameters excluded; 10 warmup epochs (capped at 10 % of a run; the
  ImageNet code uses none) then cosine;
* the logits are computed in float32 with autocast off (the code runs fp16
  autocast); CPU budgets of ~60 steps need a faster teacher (``ema=(0.95,
  1.0)``: at 0.99 its time constant is ~100 steps);
* kNN scores the online backbone, as :class:`~smt.ssl.msn.MSN` does and for
  the same reason.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SSLMethod, cosine_momentum, ema_update

__all__ = ["CARP", "CARPHead", "random_partition", "block_probs", "consistency_loss", "uniformity_loss"]


def random_partition(n_prototypes: int, block_size: int, gen: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """A random arrangement of ``N_P * N_B`` distinct prototypes into ``N_P = K // N_B`` blocks.

    Returns
    -------
    torch.LongTensor, shape (N_P, N_B)
    """
    n_blocks = n_prototypes // block_size
    if n_blocks < 1:
        raise ValueError(f"block_size {block_size} exceeds the {n_prototypes} prototypes")
    device = gen.device if gen is not None else device
    perm = torch.randperm(n_prototypes, generator=gen, device=device)
    return perm[: n_blocks * block_size].view(n_blocks, block_size)


def block_probs(logits: torch.Tensor, partition: torch.Tensor) -> torch.Tensor:
    """Softmax of ``logits`` ``(B, K)`` within each block of ``partition`` ``(N_P, N_B)``: ``(N_P, B, N_B)``."""
    return torch.softmax(logits[:, partition].transpose(0, 1).float(), dim=-1)


def consistency_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over view pairs ``v != u`` of ``mean_{b, n} -log clamp(<P_v[b, n], Q_u[b, n]>, eps, 1 - eps)``.

    Parameters
    ----------
    student, teacher : list of torch.Tensor, each (N_P, B, N_B)
        Block distributions of each view; the teacher's carry no gradient.
        Student view ``i`` and teacher view ``i`` are the same crop and are
        not paired.
    """
    eps = torch.finfo(student[0].dtype).eps
    terms = [-torch.log(torch.einsum("knc,knc->kn", p, q).clamp(eps, 1 - eps)).mean()
             for i, p in enumerate(student) for j, q in enumerate(teacher) if i != j]
    return torch.stack(terms).mean()


def uniformity_loss(probs: torch.Tensor) -> torch.Tensor:
    """``mean_b KL(p_bar_b || Uniform(N_B)) = mean_b [log N_B + sum_c p_bar_b[c] log p_bar_b[c]]``.

    Parameters
    ----------
    probs : torch.Tensor, shape (N_P, N, N_B)
        Block distributions of all rows (student and teacher views).

    Returns
    -------
    torch.Tensor, scalar in [0, log N_B]: 0 for uniform blocks, log N_B for collapsed ones.
    """
    eps = torch.finfo(probs.dtype).eps
    p_bar = probs.mean(dim=1)                                           # (N_P, N_B)
    return (math.log(probs.shape[-1]) + (p_bar * torch.log(p_bar.clamp(eps, 1 - eps))).sum(dim=-1)).mean()


class CARPHead(nn.Module):
    """MLP ``in -> hidden -> hidden -> bottleneck`` (BN + GELU) then weight-normalised prototypes.

    ``forward``: ``(B, in_dim)`` -> logits ``(B, K)``, float32.
    """

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, n_prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        # weight_norm with the gain fixed to 1: only the directions of the prototypes are learned
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, bottleneck) / math.sqrt(bottleneck))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.mlp(h)
        with torch.autocast(x.device.type, enabled=False):
            return x.float() @ F.normalize(self.prototypes.float(), dim=1).T


class CARP(SSLMethod):
    """CARP: student / EMA teacher, random prototype partitions, consistency + block uniformity.

    Parameters
    ----------
    backbone : nn.Module
    n_prototypes : int, default 4096
        ``K``.
    block_size : int, default 128
        ``N_B``, prototypes per block (``N_P = K // N_B`` blocks).
    proj_hidden, bottleneck : int, default 2048, 256
    ema : (float, float), default (0.99, 1.0)
        Teacher momentum, raised along a cosine.
    """

    name = "carp"
    hparams = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10}
    augment_recipe = "carp"

    def __init__(self, backbone, n_prototypes: int = 4096, block_size: int = 128, proj_hidden: int = 2048,
                 bottleneck: int = 256, ema=(0.99, 1.0)):
        super().__init__(backbone)
        if block_size > n_prototypes:
            raise ValueError(f"block_size {block_size} exceeds the {n_prototypes} prototypes")
        self.head = CARPHead(backbone.out_dim, proj_hidden, bottleneck, n_prototypes)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        self.n_prototypes, self.block_size, self.ema = n_prototypes, block_size, tuple(ema)

    def training_loss(self, x1, x2, gen=None):
        x = torch.cat([x1, x2])
        s = self.head(self.backbone(x))                                 # one pass: BN sees both views
        with torch.no_grad():
            self.target_backbone.train(self.training)
            self.target_head.train(self.training)
            t = self.target_head(self.target_backbone(x))
        part = random_partition(self.n_prototypes, self.block_size, gen, s.device)
        s_views, t_views = s.chunk(2), t.chunk(2)
        p = [block_probs(v, part) for v in s_views]
        q = [block_probs(v, part) for v in t_views]
        cons = consistency_loss(p, q)
        probs = torch.cat(p + q, dim=1)
        unif = uniformity_loss(probs)
        with torch.no_grad():
            p_bar = probs.mean(dim=1)
            entropy = -(p_bar * torch.log(p_bar.clamp_min(1e-12))).sum(dim=-1).mean()
            agree = torch.stack([(s_views[0].argmax(1) == t_views[1].argmax(1)).float().mean(),
                                 (s_views[1].argmax(1) == t_views[0].argmax(1)).float().mean()]).mean()
        return cons + unif, {"consistency": float(cons.detach()), "uniformity": float(unif.detach()),
                             "block_entropy": float(entropy), "agreement_top1": 100 * float(agree)}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = cosine_momentum(progress, *self.ema)
        ema_update(self.backbone, self.target_backbone, m)
        ema_update(self.head, self.target_head, m)
