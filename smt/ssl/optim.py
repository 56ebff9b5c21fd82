"""LARS and the warmup + cosine learning-rate schedule of the SSL baselines."""
from __future__ import annotations

import math

import torch

__all__ = ["LARS", "LARS_MODES", "DEFAULT_LARS_MODE", "lars_eta", "warmup_cosine", "param_groups",
           "clip_group_gradients"]

LARS_MODES = ("scaled", "clipped", "unscaled")
# measured at the CPU benchmark's budget (benchmarks/ssl_lars.py, RESULTS.md): the smaller unscaled step
# trained faster than solo-learn's (SimCLR kNN 36.2 vs 33.6 scaled / 32.0 clipped; VICReg 33.7 vs 27.4 /
# diverged), so it stays the default; "scaled" is solo-learn's step, for long runs
DEFAULT_LARS_MODE = "unscaled"


def lars_eta(mode: str, eta: float, peak_lr: float) -> tuple[float, bool]:
    """``(eta, clip_lr)`` for the LARS variant ``mode`` (see :class:`LARS`).

    * ``"scaled"``: unclipped, ``eta / peak_lr``, so that at the
      schedule's peak the step equals solo-learn's clipped step wherever its
      clip is inactive, and it follows the schedule elsewhere (no raw
      gradients in the momentum during the warmup);
    * ``"clipped"``: solo-learn's ``clip_lr`` form with ``eta`` (the
      :class:`~smt.ssl.base.Trainer` clears the momentum when the warmup ends);
    * ``"unscaled"`` (default, :data:`DEFAULT_LARS_MODE`): unclipped with
      ``eta`` itself, the form of part 1: about ``peak_lr`` times solo-learn's
      step (0.4x for SimCLR, 0.3x for VICReg at batch 256).  At the CPU
      benchmark's budget (~80 steps, ResNet-18 width 8) it trained faster than
      both others (``benchmarks/ssl_lars.py``; the table is in RESULTS.md).
    """
    if mode == "scaled":
        return eta / peak_lr, False
    if mode == "clipped":
        return eta, True
    if mode == "unscaled":
        return eta, False
    raise ValueError(f"lars_mode must be one of {LARS_MODES}, got {mode!r}")


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

    The two forms need different ``eta`` for the same step (``ssl-part2.md``
    A1): where the clip is inactive (``eta ||w|| / ||g|| < lr``, true at
    initialisation for nearly every tensor of the ResNets here) the clipped
    step is ``eta ||w|| / ||g|| * g`` and the unclipped one ``lr`` times that.
    solo-learn's ``eta = 0.02`` was tuned for the clipped form, so with
    ``lars_mode="scaled"`` the :class:`~smt.ssl.base.Trainer` passes ``eta /
    peak_lr`` to the unclipped form: the same step at the peak, scaled by the
    schedule elsewhere.  The default stays part 1's unscaled form (0.3-0.4x
    solo-learn's step), which trained faster at the CPU budgets;
    :func:`lars_eta` gives the value per mode.

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


def param_groups(model: torch.nn.Module | list, weight_decay: float, **extra) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases / norm parameters (neither).

    ``model`` may also be a list of parameters; ``extra`` keys (``lr_scale``,
    ``clip_grad``: read by the :class:`~smt.ssl.base.Trainer`) go into both groups.
    """
    decay, no_decay = [], []
    for p in (model.parameters() if isinstance(model, torch.nn.Module) else model):
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, **extra},
            {"params": no_decay, "weight_decay": 0.0, "lars": False, **extra}]


def clip_group_gradients(optimizer: torch.optim.Optimizer, default: float | None = None) -> None:
    """Clip the gradient norm of each group's parameters to its ``clip_grad`` (else ``default``).

    Groups that share a ``clip_grad`` value and a ``clip_id`` are clipped as one
    (ManifoldCLR's per-module clips); ``None`` or 0: no clipping.
    """
    joint: dict = {}
    for g in optimizer.param_groups:
        c = g.get("clip_grad", default)
        if c:
            joint.setdefault((g.get("clip_id"), c), []).extend(p for p in g["params"] if p.grad is not None)
    for (_, c), params in joint.items():
        torch.nn.utils.clip_grad_norm_(params, c)


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
