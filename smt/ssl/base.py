"""Shared training base of the deep SSL baselines (the layout of solo-learn's ``solo/methods``).

:class:`SSLMethod` is what a method file defines: a backbone, a projector and
``training_loss(view1, view2, gen)``, and optionally its augmentation recipe
and optimiser groups.  :class:`Trainer` does everything else once for all
methods: two-view augmentation on the device (the method's recipe), the
mini-batch order (shuffled, or :class:`~smt.ssl.sampler.ClassBatchSampler`),
LARS or AdamW with warmup + cosine (per-group rate multiples and gradient
clips), mixed precision on CUDA, a checkpoint after every
epoch with exact resume, a time budget (wall-clock or CPU time), the SMT paper's kNN protocol
(:class:`smt.knn.StreamingKNN`, k 30, T 0.03, on backbone features) every
``eval_every`` epochs, and progress bars.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from smt._device import resolve_device
from smt.knn import StreamingKNN

from .augment import normalize, recipe, to_float
from .optim import DEFAULT_LARS_MODE, LARS, clip_group_gradients, lars_eta, param_groups, warmup_cosine
from .sampler import ClassBatchSampler

__all__ = ["SSLMethod", "TrainConfig", "Trainer", "mlp", "embed", "ema_update", "cosine_momentum"]


def mlp(dims: list[int], last_bn: bool = False) -> nn.Sequential:
    """Projector ``Linear-BN-ReLU`` between consecutive ``dims``, plain ``Linear`` last.

    ``mlp([512, 2048, 256])`` is SimCLR's projector on ResNet-18 features.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last and not last_bn))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` on parameters; buffers are copied."""
    for p, q in zip(online.parameters(), target.parameters()):
        q.mul_(momentum).add_(p.detach(), alpha=1 - momentum)
    for b, c in zip(online.buffers(), target.buffers()):
        c.copy_(b)


def cosine_momentum(progress: float, start: float, end: float = 1.0) -> float:
    """EMA momentum raised from ``start`` to ``end`` along a half cosine of ``progress`` in [0, 1]."""
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


class SSLMethod(nn.Module):
    """Base of a self-supervised method.

    Subclasses set the class attribute ``hparams`` (the paper's optimiser
    settings: ``optimizer`` "lars" or "adamw", ``lr`` for batch 256,
    ``weight_decay``, ``warmup_epochs``; optionally ``clip_grad``, a gradient
    norm clip applied to every group without its own, and ``lars_mode``, see
    :func:`~smt.ssl.optim.lars_eta`), the class attribute ``augment_recipe``
    (a key of :data:`smt.ssl.augment.RECIPES`) and implement
    :meth:`training_loss`; :meth:`param_groups` may give groups their own
    ``lr_scale`` (a multiple of the scheduled rate) and ``clip_grad``.

    Parameters
    ----------
    backbone : nn.Module
        Maps ``(B, 3, H, W)`` to ``(B, backbone.out_dim)``.
    """

    name = "base"
    hparams: dict = {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-4, "warmup_epochs": 10}
    augment_recipe = "asymmetric"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups (default: :func:`~smt.ssl.optim.param_groups` of all trainable parameters)."""
        return param_groups(self, weight_decay)

    def training_loss(self, x1: torch.Tensor, x2: torch.Tensor,
                      gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Loss of one batch of two views ``(B, 3, H, W)`` each; returns ``(loss, logs)``."""
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Hook run after each optimiser step (e.g. an EMA target update)."""

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation scored by kNN: the backbone output ``(B, out_dim)``."""
        return self.backbone(x)


@dataclass
class TrainConfig:
    """Settings of a training run (``None``: the method's ``hparams``).

    Attributes
    ----------
    epochs : int
        Planned epochs; the cosine schedule ends there.
    batch_size : int, default 256
    lr : float, optional
        Learning rate for batch 256, scaled linearly by ``batch_size / 256``.
    weight_decay : float, optional
    optimizer : {"lars", "adamw"}, optional
    warmup_epochs : float, optional
        Linear warmup, at most 10 % of ``epochs`` (of the budget when one is set).
    budget_minutes : float, optional
        Stop once this much *training* time (evaluation excluded) is spent;
        the schedule then runs on the fraction of the budget used, so the
        cosine ends when the budget does (not bit-reproducible on resume).
    classes_per_batch : int, optional
        Use :class:`ClassBatchSampler` with this ``K``; default: shuffle.
    eval_every : int, default 1
        kNN evaluation every this many epochs (and always at the end); 0: end only.
    knn_k, knn_temperature : int, float, default 30, 0.03
        The SMT paper's kNN protocol.
    seed : int, default 0
    device : str, default "auto"
    amp : bool, default True
        bfloat16 autocast on CUDA (ignored on CPU).
    clock : {"wall", "process"}, default "wall"
        What ``budget_minutes`` and ``train_seconds`` count: wall-clock
        seconds, or CPU seconds of this process (``time.process_time``, all
        its threads), which is the fair measure of compute on a CPU shared
        with other jobs.
    checkpoint : str, optional
        File written after every epoch; a run resumes from it when it exists.
    progress : bool, default True
        tqdm bars.
    lars_mode : {"scaled", "clipped", "unscaled"}, optional
        LARS variant (:func:`~smt.ssl.optim.lars_eta`); default the method's
        ``hparams`` or :data:`~smt.ssl.optim.DEFAULT_LARS_MODE` (``"unscaled"``).
    augment : str, optional
        Augmentation recipe (a key of :data:`~smt.ssl.augment.RECIPES`);
        default the method's ``augment_recipe``.
    """

    epochs: int = 1
    batch_size: int = 256
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    warmup_epochs: float | None = None
    budget_minutes: float | None = None
    classes_per_batch: int | None = None
    eval_every: int = 1
    knn_k: int = 30
    knn_temperature: float = 0.03
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    clock: str = "wall"
    checkpoint: str | None = None
    progress: bool = True
    lars_mode: str | None = None
    augment: str | None = None


def _as_uint8_nchw(images, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy (the loaders' layout) or (N, 3, H, W) tensor -> NCHW tensor on device."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if t.ndim == 4 and t.shape[-1] == 3 and t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    return t.contiguous().to(device)


@torch.no_grad()
def embed(method: SSLMethod, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Backbone features of un-augmented, normalised images, shape (N, out_dim), float32."""
    was_training = method.training
    method.eval()
    out = [method.features(normalize(to_float(images[i:i + batch_size]))).float()
           for i in range(0, len(images), batch_size)]
    method.train(was_training)
    return torch.cat(out)


class Trainer:
    """Train an :class:`SSLMethod` and score it with kNN.

    Parameters
    ----------
    method : SSLMethod
        Built by the caller (seed torch first for a reproducible init).
    config : TrainConfig
    augment : callable, optional
        ``augment(images, gen) -> (view1, view2)``; default the recipe named by
        ``config.augment``, else by the method's ``augment_recipe``.

    Attributes
    ----------
    history : list of dict
        One row per epoch: epoch, step, train_seconds, loss (the last step's), logs (the epoch means of
        the method's loss terms), and top1, top5 when evaluated.
    step_losses : list of float
        The training loss of every step.
    """

    def __init__(self, method: SSLMethod, config: TrainConfig, augment=None) -> None:
        self.cfg = config
        self.device = resolve_device(config.device)
        self.method = method.to(self.device)
        self.augment = augment or recipe(config.augment or method.augment_recipe)
        hp = {**method.hparams, **{k: v for k, v in dataclasses.asdict(config).items()
                                   if k in ("lr", "weight_decay", "optimizer", "warmup_epochs", "lars_mode")
                                   and v is not None}}
        self.hp = hp
        self.base_lr = hp["lr"] * config.batch_size / 256  # linear scaling rule, as solo-learn
        groups = method.param_groups(hp["weight_decay"])
        if hp["optimizer"] == "lars":
            eta, clip = lars_eta(hp.get("lars_mode", DEFAULT_LARS_MODE), hp.get("lars_eta", 0.02), self.base_lr)
            self.opt = LARS(groups, lr=self.base_lr, eta=eta, clip_lr=clip)
        elif hp["optimizer"] == "adamw":
            self.opt = torch.optim.AdamW(groups, lr=self.base_lr)
        else:
            raise ValueError(f"unknown optimizer {hp['optimizer']!r}")
        self.epoch, self.step, self.train_seconds, self.finished = 0, 0, 0.0, False
        self._warm = False  # the warmup's end has cleared the clipped LARS momentum
        self.history: list[dict] = []
        self.step_losses: list[float] = []   # the loss of every step (the curves of ssl-part2.md A1)
        self.gen = torch.Generator(device=self.device)
        if config.clock not in ("wall", "process"):
            raise ValueError(f"clock must be 'wall' or 'process', got {config.clock!r}")
        self._clock = time.perf_counter if config.clock == "wall" else time.process_time

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"method": self.method.state_dict(), "optimizer": self.opt.state_dict(),
                "epoch": self.epoch, "step": self.step, "train_seconds": self.train_seconds,
                "finished": self.finished, "history": self.history, "config": dataclasses.asdict(self.cfg),
                "warm": self._warm, "step_losses": self.step_losses}

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.train_seconds, self.finished = state["train_seconds"], state["finished"]
        self.history = state["history"]
        self._warm = state.get("warm", False)
        self.step_losses = state.get("step_losses", [])

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint

    def load(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))

    # ------------------------------------------------------------------ schedule
    def _progress(self, steps_per_epoch: int) -> float:
        if self.cfg.budget_minutes:
            return self.train_seconds / (60 * self.cfg.budget_minutes)
        return self.step / max(self.cfg.epochs * steps_per_epoch, 1)

    def _warmup(self) -> float:
        # 10 of 1000 epochs in the papers; short runs warm up for at most the first 10 %
        return min(self.hp["warmup_epochs"] / max(self.cfg.epochs, 1), 0.1)

    def _set_lr(self, progress: float) -> None:
        lr = warmup_cosine(progress, self._warmup(), self.base_lr)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        if (isinstance(self.opt, LARS) and self.opt.defaults["clip_lr"] and progress >= self._warmup()
                and not self._warm):
            # clipped LARS: the raw gradients that filled the momentum at the tiny rates of the warmup
            # would be applied at the peak rate, so the momentum starts afresh (ssl-part2.md A1; at a
            # 6-step warmup VICReg still diverged with it, see RESULTS.md)
            self._warm = True
            for state in self.opt.state.values():
                state.pop("momentum_buffer", None)

    def _batches(self, labels: np.ndarray | None, n: int, epoch: int) -> list[np.ndarray]:
        if self.cfg.classes_per_batch:
            return ClassBatchSampler(labels, self.cfg.batch_size, self.cfg.classes_per_batch,
                                     self.cfg.seed).batches(epoch)
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
        bs = self.cfg.batch_size
        stop = (n // bs) * bs if n >= bs else n  # drop the last incomplete batch (BN statistics)
        return [perm[i:i + bs] for i in range(0, stop, bs)]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, train_images, train_labels, test_images, test_labels) -> dict:
        """kNN top-1 / top-5 (%) of test against train backbone features."""
        ref = embed(self.method, train_images)
        knn = StreamingKNN(embed(self.method, test_images), k=self.cfg.knn_k,
                           temperature=self.cfg.knn_temperature, device=self.device)
        knn.update(ref, torch.as_tensor(np.asarray(train_labels)))
        return knn.accuracy(np.asarray(test_labels))

    # ------------------------------------------------------------------ training
    def fit(self, images, labels=None, test_images=None, test_labels=None,
            knn_images=None, knn_labels=None, stop_after: int | None = None) -> list[dict]:
        """Train on ``images`` and evaluate along the way.

        Parameters
        ----------
        images : uint8 array, shape (N, H, W, 3) or (N, 3, H, W)
            Training images (labels are never used for training; only the
            class sampler reads them to form batches).
        labels : array of int, shape (N,), optional
            Needed by ``classes_per_batch`` and as the default kNN references.
        test_images, test_labels : optional
            kNN queries; without them there is no evaluation.
        knn_images, knn_labels : optional
            kNN reference set; default ``images`` / ``labels``.
        stop_after : int, optional
            Return after this many epochs of this call, as if interrupted
            (the schedule is still that of ``config.epochs``); a later call
            with the same checkpoint resumes.

        Returns
        -------
        list of dict
            :attr:`history`.
        """
        cfg = self.cfg
        x = _as_uint8_nchw(images, self.device)
        n = len(x)
        labels_np = None if labels is None else np.asarray(labels)
        evaluate = test_images is not None and test_labels is not None
        if evaluate:
            xq = _as_uint8_nchw(test_images, self.device)
            xr = x if knn_images is None else _as_uint8_nchw(knn_images, self.device)
            yr = labels_np if knn_labels is None else np.asarray(knn_labels)
        if cfg.checkpoint and Path(cfg.checkpoint).exists():
            self.load(cfg.checkpoint)
        amp = cfg.amp and self.device.type == "cuda"
        last_loss = float("nan")
        first_epoch = self.epoch
        while not self.finished and self.epoch < cfg.epochs:
            if stop_after is not None and self.epoch - first_epoch >= stop_after:
                break
            batches = self._batches(labels_np, n, self.epoch)
            # the epoch alone seeds the augmentations: a resumed epoch replays exactly
            self.gen.manual_seed(int(np.random.default_rng([cfg.seed, self.epoch, 1]).integers(2**62)))
            self.method.train()
            bar = tqdm(batches, desc=f"{self.method.name} epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not cfg.progress, leave=False)
            log_sums: dict = {}
            for idx in bar:
                tic = self._clock()
                self._set_lr(self._progress(len(batches)))
                v1, v2 = self.augment(x[torch.as_tensor(idx, device=self.device)], self.gen)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    loss, logs = self.method.training_loss(v1, v2, self.gen)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                clip_group_gradients(self.opt, self.hp.get("clip_grad"))
                self.opt.step()
                self.step += 1
                self.method.after_step(min(self._progress(len(batches)), 1.0))
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                self.train_seconds += self._clock() - tic
                last_loss = float(loss.detach())
                self.step_losses.append(last_loss)
                for k, v in logs.items():
                    log_sums[k] = log_sums.get(k, 0.0) + v
                if not np.isfinite(last_loss):
                    raise FloatingPointError(f"{self.method.name}: loss became {last_loss} at step {self.step}")
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{self.opt.param_groups[0]['lr']:.3g}")
                if cfg.budget_minutes and self.train_seconds >= 60 * cfg.budget_minutes:
                    self.finished = True
                    break
            self.epoch += 1
            done = self.finished or self.epoch >= cfg.epochs
            n_steps = max(self.step - (self.history[-1]["step"] if self.history else 0), 1)
            row = {"epoch": self.epoch, "step": self.step, "train_seconds": round(self.train_seconds, 2),
                   "loss": last_loss, "logs": {k: v / n_steps for k, v in log_sums.items()}}
            if evaluate and (done or (cfg.eval_every and self.epoch % cfg.eval_every == 0)):
                row.update(self.evaluate(xr, yr, xq, test_labels))
                if cfg.progress:
                    tqdm.write(f"{self.method.name} epoch {self.epoch}: loss {last_loss:.4f} "
                               f"kNN top-1 {row['top1']:.2f} ({self.train_seconds:.0f} s)")
            self.history.append(row)
            if cfg.checkpoint:
                self.save(cfg.checkpoint)
        return self.history
