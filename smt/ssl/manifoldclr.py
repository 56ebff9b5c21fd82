"""ManifoldCLR (Fallah, Helbling, Johnsen & Rozell, TMLR 2024): contrastive learning, learned Lie-group feature augmentation.

A dictionary of ``M`` Lie-group generators ``Psi_m`` (block-diagonal: ``S``
blocks of ``d x d``) models how the backbone features of one view turn into
those of the other: ``z1 ~ T(c) z0`` with ``T(c) = expm(sum_m c_m Psi_m)``
applied per block.  The coefficients ``c`` are inferred variationally with a
sparse Laplace posterior; a learned prior ``p(c | z0)`` then samples new
coefficients to *augment* features in the contrastive loss.  Everything
follows kfallah/manifold-contrastive at ``15294ef4`` (``ssl-part2.md`` B2):

* ``T(c)`` per block (``transop.py``, ``dict_count`` blocks), ``torch.linalg.matrix_exp``
  computed in float32 with autocast off; "stable" init: 2x2 rotation
  generators ``[[r, -theta], [theta, r]]`` on the diagonal, ``r ~ U(+-0.5) 1e-4``,
  ``theta ~ U(+-0.5) 6``;
* ``q(c | z0, z1) = Laplace(mu, b)``: an MLP on ``concat(z0, z1)`` (detached)
  ``2D -> 4D -> 4D -> D`` with LeakyReLU and linear heads; ``log b`` is
  offset by ``log 0.01`` and clamped at 3, ``mu`` clamped to +-5 and offset by
  0.05; the prior ``p(c | z0)`` is an MLP ``D -> 4D -> 2D -> D`` with the same
  heads, blended linearly from the hyper-prior Laplace(0.05, 0.01) over the
  first ``prior_warmup`` of the run (10k iterations in the code);
* sampling: ``eps = -b sign(u) log(1 - 2|u|)``, ``u ~ U(-1/2, 1/2)``; the value
  is ``mu + S_zeta(eps)`` where ``|eps| > zeta`` and exactly 0 elsewhere (soft
  threshold ``zeta``), the gradient that of ``mu + eps`` (straight through);
* max-ELBO: from ``elbo_start`` of the run (5000 iterations in the code), ``J``
  noise draws per pair, the one with the smallest ``||T(c) z0 - z1||^2`` kept.

Loss (the CIFAR-10 config with the projection head, ``transop_vi-thresh_proj_cifar10``)::

    c  ~ q(c | sg z0, sg z1)  (max-ELBO)        c0 ~ p(c | sg z0)
    L = NTXent_0.5(g(T(c0) z0), g(z1))          # anchor: the augmented feature
      + 10   * mse(T(c) z0, sg z1)              # on the first half of the batch
      + 1e-3 * mean_batch sum_m KL(q || p)      # closed-form Laplace KL
      + 1e-2 * mean_batch ||mu_q||^2

with ``g`` the projector ``D -> 1024 -> 128``.  The operator loss is the
element mean (``F.mse_loss``).  Optimiser groups: backbone and projector
AdamW 3e-3 at batch 512 (1.5e-3 for 256, scaled linearly), weight decay
1e-5; ``Psi`` lr 1e-3, weight decay 1e-3, gradient clip 0.1; encoder and
prior lr 1e-4, weight decay 1e-5, clip 1.0; 10 warmup epochs then cosine for
all (the rates of ``Psi`` and the encoders are fixed fractions of the
backbone's).  The code trains in fp32; on CUDA the backbone here runs under
the Trainer's bf16 autocast and everything after it in fp32.  The baseline
is the SimCLR of the same harness,
:class:`~smt.ssl.simclr.SimCLRAdamW`.

CPU budgets (``ssl-part2.md`` B2): ResNet-18 width 8 (64-d features, blocks of
16), ``M = 16``, ``J = 4``; the 20-sample, 8 x 64 config is for a GPU (20 x 256
x 8 exponentials of 64 x 64 take 24 s per step on one CPU thread).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SSLMethod, mlp
from .optim import param_groups
from .simclr import nt_xent

__all__ = ["ManifoldCLR", "LieOperators", "CoefficientEncoder", "laplace_kl", "soft_threshold",
           "reparameterize", "laplace_noise", "select_max_elbo"]


def soft_threshold(x: torch.Tensor, zeta: float) -> torch.Tensor:
    """``sign(x) max(|x| - zeta, 0)``."""
    return torch.sign(x) * F.relu(x.abs() - zeta)


def laplace_noise(shape, gen: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``u ~ U(-1/2, 1/2)`` of ``shape``, the noise of :func:`reparameterize`."""
    device = gen.device if gen is not None else device
    return torch.rand(shape, generator=gen, device=device) - 0.5


def reparameterize(mu: torch.Tensor, log_b: torch.Tensor, u: torch.Tensor, zeta: float) -> torch.Tensor:
    """Thresholded Laplace sample with a straight-through gradient.

    Parameters
    ----------
    mu, log_b : torch.Tensor, shape (..., M)
        Location and log scale.
    u : torch.Tensor, shape (..., M)
        Noise in (-1/2, 1/2) (:func:`laplace_noise`).
    zeta : float
        Soft threshold; 0 disables it.

    Returns
    -------
    torch.Tensor, shape (..., M)
        Value ``mu + S_zeta(eps)`` where ``|eps| > zeta`` and 0 elsewhere
        (a fraction ``1 - exp(-zeta / b)`` of exact zeros); gradient that of
        ``mu + eps``, ``eps = -b sign(u) log(1 - 2|u|)``.
    """
    eps = -torch.exp(log_b) * torch.sign(u) * torch.log((1.0 - 2.0 * u.abs()).clamp(min=1e-6))
    c = mu + eps
    if zeta <= 0:
        return c
    shrunk = soft_threshold(eps.detach(), zeta)
    value = torch.where(shrunk != 0, mu.detach() + shrunk, torch.zeros_like(shrunk))
    return c + (value - c.detach())


def laplace_kl(mu_q: torch.Tensor, log_b_q: torch.Tensor, mu_p: torch.Tensor, log_b_p: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Laplace(mu_q, b_q) || Laplace(mu_p, b_p))``, in closed form.

    ``|mu_q - mu_p| / b_p + log b_p - log b_q - 1 + (b_q / b_p) exp(-|mu_q - mu_p| / b_q)``.
    """
    d = (mu_q - mu_p).abs()
    b_q, b_p = torch.exp(log_b_q), torch.exp(log_b_p)
    return d / b_p + log_b_p - log_b_q - 1 + (b_q / b_p) * torch.exp(-d / b_q)


def select_max_elbo(u: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """For each pair, the noise draw of smallest transport error.

    Parameters
    ----------
    u : torch.Tensor, shape (J, n, M)
    err : torch.Tensor, shape (J, n)

    Returns
    -------
    torch.Tensor, shape (n, M): ``u[argmin_j err[j, i], i]``.
    """
    best = err.argmin(dim=0)                                              # (n,)
    return u[best, torch.arange(u.shape[1], device=u.device)]


class LieOperators(nn.Module):
    """Block-diagonal transport operators ``T(c) = expm(sum_m c_m Psi_m)``.

    Parameters
    ----------
    dim : int
        Feature dimension ``D``; a multiple of ``block``.
    n_operators : int
        ``M``.
    block : int
        ``d``, even (the stable init places 2x2 rotation generators).
    real_range, imag_range : float, default 1e-4, 6.0

    Attributes
    ----------
    psi : nn.Parameter, shape (S, M, d, d), ``S = dim // block``.

    Notes
    -----
    ``forward(z, c)``: ``z`` ``(n, D)``, ``c`` ``(..., n, M)`` -> ``(..., n, D)``.
    """

    def __init__(self, dim: int, n_operators: int, block: int, real_range: float = 1e-4,
                 imag_range: float = 6.0) -> None:
        super().__init__()
        if dim % block or block % 2:
            raise ValueError(f"block {block} must be even and divide the feature dimension {dim}")
        self.n_blocks, self.block, self.n_operators = dim // block, block, n_operators
        psi = torch.zeros(self.n_blocks, n_operators, block, block)
        real = (torch.rand(self.n_blocks, n_operators) - 0.5) * real_range
        imag = (torch.rand(self.n_blocks, n_operators) - 0.5) * imag_range
        for i in range(0, block, 2):
            psi[..., i, i] = psi[..., i + 1, i + 1] = real
            psi[..., i + 1, i], psi[..., i, i + 1] = imag, -imag
        self.psi = nn.Parameter(psi)

    def matrices(self, c: torch.Tensor) -> torch.Tensor:
        """``T(c)`` per block: ``(..., M)`` -> ``(..., S, d, d)``, float32."""
        with torch.autocast(c.device.type, enabled=False):
            a = torch.einsum("...m,smpk->...spk", c.float(), self.psi.float())
            return torch.linalg.matrix_exp(a)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = self.matrices(c)
        zb = z.float().view(*z.shape[:-1], self.n_blocks, self.block, 1)
        return (t @ zb).flatten(-3)


def _leaky_mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU()]
    return nn.Sequential(*layers)


class _LaplaceHeads(nn.Module):
    """Linear heads for ``(mu, log b)`` with the code's offsets and clamps."""

    def __init__(self, feat: int, n_operators: int, scale_prior: float, shift_prior: float) -> None:
        super().__init__()
        self.mu, self.log_b = nn.Linear(feat, n_operators), nn.Linear(feat, n_operators)
        self.log_scale_prior, self.shift_prior = math.log(scale_prior), shift_prior

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.mu(h).clamp(-5, 5) + self.shift_prior,
                (self.log_b(h) + self.log_scale_prior).clamp(max=3.0))


class CoefficientEncoder(nn.Module):
    """Posterior ``q(c | z0, z1)`` and learned prior ``p(c | z0)``, both Laplace.

    Parameters
    ----------
    dim : int
        Feature dimension ``D`` (hidden widths ``4D, 4D, D`` and ``4D, 2D, D``:
        2048, 2048, 512 and 2048, 1024, 512 at ``D = 512``).
    n_operators : int
    hidden : int, optional
        Overrides ``4D`` (tests).
    scale_prior, shift_prior : float, default 0.01, 0.05
        The hyper-prior Laplace(shift_prior, scale_prior), also the heads' offsets.
    """

    def __init__(self, dim: int, n_operators: int, hidden: int | None = None, scale_prior: float = 0.01,
                 shift_prior: float = 0.05) -> None:
        super().__init__()
        h = hidden or 4 * dim
        self.q_net = _leaky_mlp([2 * dim, h, h, dim])
        self.q_heads = _LaplaceHeads(dim, n_operators, scale_prior, shift_prior)
        self.p_net = _leaky_mlp([dim, h, max(h // 2, 1), dim])
        self.p_heads = _LaplaceHeads(dim, n_operators, scale_prior, shift_prior)
        self.hyper = (shift_prior, math.log(scale_prior))

    def posterior(self, z0: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log b)`` of ``q``, each ``(n, M)``."""
        return self.q_heads(self.q_net(torch.cat([z0, z1], dim=-1)))

    def prior(self, z0: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log b)`` of the prior: ``weight`` of the learned one, ``1 - weight`` of the hyper-prior."""
        mu, log_b = self.p_heads(self.p_net(z0))
        if weight >= 1:
            return mu, log_b
        return (weight * mu + (1 - weight) * self.hyper[0], weight * log_b + (1 - weight) * self.hyper[1])


class ManifoldCLR(SSLMethod):
    """ManifoldCLR on a backbone with ``out_dim`` features.

    Parameters
    ----------
    backbone : nn.Module
    n_operators : int, default 32
        ``M``.
    operator_block : int, default 64
        ``d``; ``out_dim // d`` blocks.
    n_samples : int, default 20
        ``J`` of max-ELBO.
    zeta : float, default 0.01
        Soft threshold (``lambda_prior``).
    proj_hidden, proj_out : int, default 1024, 128
    temperature : float, default 0.5
    operator_weight, kl_weight, shift_weight : float, default 10, 1e-3, 1e-2
    prior_warmup, elbo_start : float, default 0.2, 0.1
        Fractions of the run (the code: 10k and 5k iterations of ~100k).
    encoder_hidden : int, optional
        Hidden width of the coefficient encoders (default ``4 * out_dim``).
    """

    name = "manifoldclr"
    hparams = {"optimizer": "adamw", "lr": 1.5e-3, "weight_decay": 1e-5, "warmup_epochs": 10}
    augment_recipe = "manifoldclr"
    # fixed fractions of the backbone's rate (3e-3 at batch 512), and the code's clips
    group_settings = {"psi": dict(lr_scale=1e-3 / 3e-3, weight_decay=1e-3, clip_grad=0.1),
                      "encoder": dict(lr_scale=1e-4 / 3e-3, weight_decay=1e-5, clip_grad=1.0)}

    def __init__(self, backbone, n_operators: int = 32, operator_block: int = 64, n_samples: int = 20,
                 zeta: float = 0.01, proj_hidden: int = 1024, proj_out: int = 128, temperature: float = 0.5,
                 operator_weight: float = 10.0, kl_weight: float = 1e-3, shift_weight: float = 1e-2,
                 prior_warmup: float = 0.2, elbo_start: float = 0.1, encoder_hidden: int | None = None):
        super().__init__(backbone)
        dim = backbone.out_dim
        self.projector = mlp([dim, proj_hidden, proj_out])
        self.operators = LieOperators(dim, n_operators, min(operator_block, dim))
        self.encoder = CoefficientEncoder(dim, n_operators, encoder_hidden)
        self.n_samples, self.zeta, self.temperature = n_samples, zeta, temperature
        self.weights = (operator_weight, kl_weight, shift_weight)
        self.prior_warmup, self.elbo_start = prior_warmup, elbo_start
        self.register_buffer("progress", torch.zeros(()))   # checkpointed with the model

    def param_groups(self, weight_decay: float) -> list[dict]:
        s = self.group_settings
        main = [p for m in (self.backbone, self.projector) for p in m.parameters()]
        return (param_groups(main, weight_decay)
                + [{"params": [self.operators.psi], "clip_id": "psi", **s["psi"]}]
                + param_groups(list(self.encoder.parameters()), clip_id="encoder", **s["encoder"]))

    def _coefficients(self, mu, log_b, z0, z1, gen) -> torch.Tensor:
        """Posterior sample; max-ELBO over ``n_samples`` draws once ``elbo_start`` is passed."""
        j = self.n_samples if float(self.progress) >= self.elbo_start else 1
        u = laplace_noise((j, *mu.shape), gen, mu.device)
        if j > 1:
            with torch.no_grad():
                c = reparameterize(mu, log_b, u, self.zeta)                   # (J, n, M)
                err = (self.operators(z0, c) - z1).pow(2).sum(-1)             # (J, n)
            u = select_max_elbo(u, err)
        else:
            u = u[0]
        return reparameterize(mu, log_b, u, self.zeta)

    def training_loss(self, x1, x2, gen=None):
        z = self.backbone(torch.cat([x1, x2])).float()
        # the paper trains in fp32: on CUDA only the backbone runs under the Trainer's bf16 autocast
        with torch.autocast(z.device.type, enabled=False):
            return self._loss(*z.chunk(2), gen)

    def _loss(self, z0: torch.Tensor, z1: torch.Tensor, gen) -> tuple[torch.Tensor, dict]:
        n = max(len(z0) // 2, 1)                                              # operator losses: half the batch
        w_prior = min(float(self.progress) / self.prior_warmup, 1.0) if self.prior_warmup > 0 else 1.0
        a0, a1 = z0[:n].detach(), z1[:n].detach()
        mu_q, log_b_q = self.encoder.posterior(a0, a1)
        mu_p, log_b_p = self.encoder.prior(a0, w_prior)
        c = self._coefficients(mu_q, log_b_q, a0, a1, gen)
        op = F.mse_loss(self.operators(z0[:n], c), a1)
        kl = laplace_kl(mu_q, log_b_q, mu_p, log_b_p).sum(-1).mean()
        shift = mu_q.pow(2).sum(-1).mean()
        # feature augmentation: the prior's sample moves z0 along the learned manifold
        mu0, log_b0 = self.encoder.prior(z0.detach(), w_prior)
        c0 = reparameterize(mu0, log_b0, laplace_noise(mu0.shape, gen, mu0.device), self.zeta)
        g0, g1 = self.projector(torch.cat([self.operators(z0, c0), z1])).chunk(2)
        nce = nt_xent(g0, g1, self.temperature)
        wo, wk, ws = self.weights
        loss = nce + wo * op + wk * kl + ws * shift
        with torch.no_grad():
            base = F.mse_loss(a0, a1)
        return loss, {"nt_xent": float(nce.detach()), "operator": float(op.detach()),
                      "operator_identity": float(base), "kl": float(kl.detach()), "shift_l2": float(shift.detach()),
                      "zero_fraction": float((c == 0).float().mean())}

    def after_step(self, progress: float) -> None:
        self.progress.fill_(progress)
