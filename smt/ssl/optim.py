"""LARS and the warmup + cosine learning-rate schedule of the SSL baselines."""
from __future__ import annotations

import math

import torch

__all__ = ["LARS", "warmup_cosine", "param_groups"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter tensor ``w`` with gradient ``g``, the local rate is
    ``local = eta * ||w|| / (||g|| + wd * ||w||)`` and the step ``g + wd * w``
    is scaled by ``local`` (the original LARS, as in the official VICReg and
    BYOL code) or, with ``clip_lr`` (solo-learn's option), by
    ``min(local / lr, 1)`` so that LARS never raises the global rate.

    ``clip_lr`` is off by default: at small ``lr`` (the start of a warmup) the
    clipped factor is 1, raw gradients enter the momentum buffer, and they are
    still there when the rate has grown.  Over solo-learn's 10-epoch warmup
    they decay away; over the ~10-step warmups of this project's CPU budgets
    VICReg diverged (NaN at step 7), while the unclipped form trained stably.  Groups with ``lars=False`` (biases and norm
    layers, as in solo-learn's ``exclude_bias_n_norm_lars``) are plain SGD.

    Parameters
    ----------
    params : iterable
    lr : float
    momentum : float, default 0.9
    weight_decay : float, default 0.0
    eta : float, default 0.02
        Trust coefficient (solo-learn's default).
    clip_lr : bool, default False
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, clip_lr: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr,
                        lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    # trust ratio eta ||w|| / (||g|| + wd ||w||) (solo-learn's denominator); clipped,
                    # the adapted rate min(eta ||w|| / (...), lr) never exceeds the global one
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    trust = group["eta"] * w_norm / (g_norm + group["weight_decay"] * w_norm + 1e-8)
                    if group["clip_lr"]:
                        trust = (trust / group["lr"]).clamp(max=1.0) if group["lr"] > 0 else torch.ones_like(trust)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    g = g.add(p, alpha=group["weight_decay"]) * ratio
                elif group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases / norm parameters (neither)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars": False}]


def warmup_cosine(progress: float, warmup: float, base_lr: float, final_lr: float = 0.0,
                  warmup_start_lr: float = 0.0) -> float:
    """Learning rate at ``progress`` (fraction of training done, in [0, 1]).

    Linear warmup from ``warmup_start_lr`` to ``base_lr`` over the first
    ``warmup`` fraction, then a half cosine down to ``final_lr``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return warmup_start_lr + (base_lr - warmup_start_lr) * progress / warmup
    t = (progress - warmup) / max(1.0 - warmup, 1e-12)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * t))
