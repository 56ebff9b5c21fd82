"""Homomorphic SSL (Keller, Suau & Zappella, TMLR 2023): the SSL loss between fibres of one equivariant representation.

If a network ``f`` is equivariant to a group ``G`` of input transformations
with a regular representation, ``f(T_g x) = Gamma_g f(x)`` permutes the
fibres of ``f(x)`` (one per group element).  Reading the identity fibre of
two augmented inputs ``T_g1 x``, ``T_g2 x`` (augmentation-based SSL, A-SSL) is
then the same as reading fibres ``g1^-1`` and ``g2^-1`` of the *one*
unaugmented forward pass: the input augmentation by ``G`` is subsumed by the
architecture.  H-SSL computes the loss between fibres; with unstructured
features (no equivariance, arbitrary "fibres") the same loss is expected to
fail (the paper's abstract).

This module has the three methods on the C4-rotation network
:class:`~smt.ssl.equivariant.P4ResNet18`, with the NT-Xent loss (temperature
0.1) and a projector shared by all fibres:

* :class:`HSSL` (``"hssl"``): per image draw ``g1 != g2`` in C4, contrast
  fibres ``z[:, :, g1]`` and ``z[:, :, g2]`` of one forward pass (negatives:
  the fibres of the other images);
* ``HSSL(mode="assl")`` (``"assl"``): the same network fed ``rot90(x, g1)`` and
  ``rot90(x, g2)``, read at the identity fibre.  Its loss equals H-SSL's with
  fibres ``-g1, -g2`` exactly (``assl_loss`` / ``hssl_loss``), also in training
  mode, because the group-shared BatchNorm sees the same statistics; it costs
  two forward passes where H-SSL needs one;
* ``HSSL(backbone=P4ResNet18(tied=False))`` (``"hssl_unstructured"``): the
  control with free weights of the same shapes.

Both use the single first view of the augmentation recipe (crop, jitter,
grayscale, flip: augmentations outside the group), not the second.  kNN
scores the group-invariant features (the mean over fibres).

What is *not* from the paper (its method section and Table 1 could not be
read; ``ssl-part2.md`` B3 marks them "recalled, unverified"): the choice of
C4 as the group (exactly equivariant on the pixel grid, so the A-SSL =
H-SSL identity is testable; the paper's headline groups are translation and
scale (SESN), not implemented here), the ResNet-18 layout, the optimiser
(the project's SimCLR settings: LARS lr 0.4, weight decay 1e-5, 10 warmup
epochs, projector 2048 -> 256), and the absence of its detached online linear
classifier.
"""
from __future__ import annotations

import torch

from .base import SSLMethod, mlp
from .equivariant import rot90
from .simclr import nt_xent

__all__ = ["HSSL", "draw_group_pairs", "fibre_pairs", "rotate_each"]


def draw_group_pairs(n: int, gen: torch.Generator | None = None, device=None, order: int = 4):
    """Per image, two distinct group elements ``g1 != g2`` of C_order, uniformly: two LongTensors (n,)."""
    device = gen.device if gen is not None else device
    g1 = torch.randint(0, order, (n,), generator=gen, device=device)
    g2 = (g1 + torch.randint(1, order, (n,), generator=gen, device=device)) % order
    return g1, g2


def fibre_pairs(z: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fibres ``z[i, :, g1[i]]`` and ``z[i, :, g2[i]]`` of fields ``z`` ``(B, C, |G|)``: two ``(B, C)``."""
    i = torch.arange(len(z), device=z.device)
    return z[i, :, g1], z[i, :, g2]


def rotate_each(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image ``i`` of ``x`` ``(B, C, H, W)`` by ``k[i]`` quarter turns."""
    out = x.clone()
    for r in range(1, 4):
        sel = k == r
        if sel.any():
            out[sel] = rot90(x[sel], r)
    return out


class HSSL(SSLMethod):
    """H-SSL / A-SSL with NT-Xent on a :class:`~smt.ssl.equivariant.P4ResNet18`.

    Parameters
    ----------
    backbone : P4ResNet18
        Has ``fibres(x) -> (B, out_dim, 4)``.
    mode : {"hssl", "assl"}, default "hssl"
    proj_hidden, proj_out : int, default 2048, 256
    temperature : float, default 0.1
    """

    name = "hssl"
    hparams = {"optimizer": "lars", "lr": 0.4, "weight_decay": 1e-5, "warmup_epochs": 10}
    augment_recipe = "asymmetric"

    def __init__(self, backbone, mode: str = "hssl", proj_hidden: int = 2048, proj_out: int = 256,
                 temperature: float = 0.1):
        super().__init__(backbone)
        if mode not in ("hssl", "assl"):
            raise ValueError(f"mode must be 'hssl' or 'assl', got {mode!r}")
        self.mode, self.temperature = mode, temperature
        self.projector = mlp([backbone.out_dim, proj_hidden, proj_out])
        self.name = mode if getattr(backbone, "tied", True) else f"{mode}_unstructured"

    def _nce(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.projector(torch.cat([u, v])).chunk(2)
        return nt_xent(p1, p2, self.temperature)

    def hssl_loss(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """NT-Xent between fibres ``g1`` and ``g2`` of one forward pass of ``x``."""
        return self._nce(*fibre_pairs(self.backbone.fibres(x), g1, g2))

    def assl_loss(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """NT-Xent between the identity fibres of ``rot90(x, g1)`` and ``rot90(x, g2)`` (one pass over both)."""
        z = self.backbone.fibres(torch.cat([rotate_each(x, g1), rotate_each(x, g2)]))[:, :, 0]
        return self._nce(*z.chunk(2))

    def training_loss(self, x1, x2, gen=None):
        g1, g2 = draw_group_pairs(len(x1), gen, x1.device)
        loss = (self.assl_loss if self.mode == "assl" else self.hssl_loss)(x1, g1, g2)
        return loss, {"nt_xent": float(loss.detach())}
