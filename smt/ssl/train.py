"""Train a deep SSL baseline on CIFAR and score it with the SMT paper's kNN protocol.

    python -m smt.ssl.train --method simclr --dataset cifar10 --epochs N [--budget-minutes M]
        [--data DIR] [--n-train N] [--n-test N] [--width W] [--classes-per-batch K]
        [--long-tail N_MAX] [--checkpoint FILE] [--json FILE]

Prints the kNN top-1 / top-5 every ``--eval-every`` epochs and a final line;
``--json`` appends the run (settings, history, final accuracy) as one line.

From Python, :func:`run` takes typed settings (no command line)::

    from smt.ssl.train import ModelConfig, TrainConfig, load_data, run
    row = run("simclr", TrainConfig(epochs=100, budget_minutes=5), load_data(n_train=5000),
              ModelConfig(width=32))
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

from smt.datasets import load_cifar10, load_cifar100

from . import METHODS, build_method
from .augment import RECIPES
from .base import TrainConfig, Trainer
from .optim import DEFAULT_LARS_MODE, LARS_MODES
from .sampler import long_tailed_indices


@dataclass
class ModelConfig:
    """Backbone sizes and method settings (:func:`smt.ssl.build_method`).

    Attributes
    ----------
    width : int, default 64
        ResNet-18 width (64 = ResNet-18).
    vit_dim, vit_depth, vit_heads : int, default 192, 12, 3
        ViT size (MSN, PMSN).
    proj_hidden : int, optional
        Projector hidden width (default the paper's).
    n_prototypes : int, default 1024
        MSN / PMSN prototypes.
    carp_k, carp_block : int, default 4096, 128
        CARP's prototypes K and prototypes per block N_B.
    carp_ema : float, default 0.99
        CARP's teacher momentum at the start (it rises to 1).
    mclr_operators, mclr_block, mclr_samples : int, default 32, 64, 20
        ManifoldCLR's operators M, operator block size d and max-ELBO samples J.
    p4_width : int, default 16
        Channels per fibre of the C4-equivariant ResNet (H-SSL, A-SSL, the unstructured control).
    """

    width: int = 64
    vit_dim: int = 192
    vit_depth: int = 12
    vit_heads: int = 3
    proj_hidden: int | None = None
    n_prototypes: int = 1024
    carp_k: int = 4096
    carp_block: int = 128
    carp_ema: float = 0.99
    mclr_operators: int = 32
    mclr_block: int = 64
    mclr_samples: int = 20
    p4_width: int = 16

    def method_kwargs(self, method: str, seed: int = 0) -> dict:
        """Keyword arguments of :func:`smt.ssl.build_method` for ``method``."""
        kw = dict(width=self.width, vit_dim=self.vit_dim, vit_depth=self.vit_depth, vit_heads=self.vit_heads,
                  proj_hidden=self.proj_hidden, n_prototypes=self.n_prototypes, carp_k=self.carp_k,
                  carp_block=self.carp_block, p4_width=self.p4_width, seed=seed)
        if method == "carp":
            kw["ema"] = (self.carp_ema, 1.0)
        if method == "manifoldclr":
            kw.update(n_operators=self.mclr_operators, operator_block=self.mclr_block, n_samples=self.mclr_samples)
        return kw

    def backbone_name(self, method: str) -> str:
        """The backbone (and the method's size settings) in words, for tables."""
        if method in ("msn", "pmsn"):
            return f"ViT dim {self.vit_dim}, depth {self.vit_depth}"
        if method in ("hssl", "assl"):
            return f"P4-ResNet-18 width {self.p4_width}"
        if method == "hssl_unstructured":
            return f"ResNet-18 width {4 * self.p4_width}, untied P4 shapes"
        extra = {"carp": f"; K {self.carp_k}, N_B {self.carp_block}, EMA {self.carp_ema}",
                 "manifoldclr": f"; M {self.mclr_operators}, d {self.mclr_block}, J {self.mclr_samples}"}
        return f"ResNet-18 width {self.width}{extra.get(method, '')}"


def add_model_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options for every :class:`ModelConfig` field, plus seed, device, threads and clock: what the
    comparison benchmarks (``benchmarks/ssl_*.py``) offer too (read back with :func:`model_config`)."""
    helps = {"width": "ResNet-18 width (64 = ResNet-18)", "n_prototypes": "MSN / PMSN prototypes",
             "carp_k": "CARP prototypes K", "carp_block": "CARP prototypes per block N_B",
             "carp_ema": "CARP teacher momentum at the start (-> 1)", "mclr_operators": "ManifoldCLR operators M",
             "mclr_block": "ManifoldCLR operator block size d", "mclr_samples": "ManifoldCLR max-ELBO samples J",
             "p4_width": "channels per fibre of the C4 ResNet (H-SSL, A-SSL)",
             "proj_hidden": "projector hidden width (default: the paper's)"}
    for field in dataclasses.fields(ModelConfig):
        kind = int if field.name == "proj_hidden" else type(field.default)
        ap.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default,
                        help=helps.get(field.name))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="budget in wall-clock or in CPU seconds of this process (fair on a shared CPU)")
    return ap


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The :class:`ModelConfig` of options added by :func:`add_model_arguments`."""
    return ModelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig)})


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--method", choices=sorted(METHODS), required=True)
    ap.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    ap.add_argument("--data", default=None, help="data root holding cifar10/ (default: $SMT_DATA)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--budget-minutes", type=float, default=None, help="stop after this much training time")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=None, help="for batch 256 (default: the paper's)")
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--warmup-epochs", type=float, default=None)
    ap.add_argument("--n-train", type=int, default=None, help="first N training images (ignored with --long-tail)")
    ap.add_argument("--n-test", type=int, default=None, help="first N test images")
    ap.add_argument("--long-tail", type=int, default=None, metavar="N_MAX",
                    help="long-tailed training subset: class c keeps N_MAX * (c+1)^-exponent images")
    ap.add_argument("--long-tail-exponent", type=float, default=1.0)
    ap.add_argument("--classes-per-batch", type=int, default=None, help="K of the class batch sampler")
    ap.add_argument("--lars-mode", choices=list(LARS_MODES), default=None,
                    help="LARS variant (default: unscaled, part 1's form; scaled: solo-learn's step at the peak)")
    ap.add_argument("--augment", choices=sorted(RECIPES), default=None,
                    help="augmentation recipe (default: the method's own)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", default=None)
    return ap


def load_data(dataset: str = "cifar10", root: str | None = None, n_train: int | None = None,
              n_test: int | None = None, long_tail: int | None = None, long_tail_exponent: float = 1.0,
              seed: int = 0):
    """Training images and labels (maybe a subset, or long-tailed) and the kNN test split.

    Parameters
    ----------
    dataset : {"cifar10", "cifar100"}
    root : str, optional
        Data root (default ``$SMT_DATA``).
    n_train, n_test : int, optional
        First N images of each split (``n_train`` is ignored with ``long_tail``).
    long_tail : int, optional
        Class ``c`` keeps ``long_tail * (c + 1) ** -long_tail_exponent`` images, drawn with ``seed``.

    Returns
    -------
    x, y, x_test, y_test : ndarrays, images of shape (n, 32, 32, 3) uint8
    """
    load = {"cifar10": load_cifar10, "cifar100": load_cifar100}[dataset]
    x, y = load(root, "train")
    xt, yt = load(root, "test")
    if not long_tail:  # a long-tailed subset is drawn from the whole training set
        x, y = x[:n_train], y[:n_train]
    else:
        keep = long_tailed_indices(y, long_tail, long_tail_exponent, seed=seed)
        x, y = x[keep], y[keep]
    return x, y, xt[:n_test], yt[:n_test]


def run(method: str, config: TrainConfig, data, model: ModelConfig | None = None, *,
        json_path: str | None = None) -> dict:
    """Train and evaluate one method.

    Parameters
    ----------
    method : str
        A key of :data:`smt.ssl.METHODS`.
    config : TrainConfig
        Schedule, budget, optimiser, device, evaluation (its ``seed`` also seeds the initialisation).
    data : tuple
        ``(x, y, x_test, y_test)``, e.g. from :func:`load_data`.
    model : ModelConfig, optional
        Backbone sizes and method settings (default ``ModelConfig()``).
    json_path : str, optional
        Append the returned row to this JSON-lines file.

    Returns
    -------
    dict
        The run: ``method``, ``config``, ``model``, history, time and final kNN top-1 / top-5.
    """
    model = ModelConfig() if model is None else model
    x, y, xt, yt = data
    net = build_method(method, **model.method_kwargs(method, seed=config.seed))
    tic, cpu_tic = time.perf_counter(), time.process_time()
    trainer = Trainer(net, config)
    history = trainer.fit(x, y, xt, yt)
    final = history[-1]
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
           "threads": torch.get_num_threads(), "device": str(trainer.device), "method": method,
           "backbone": model.backbone_name(method), "config": dataclasses.asdict(config),
           "model": dataclasses.asdict(model),
           "n_train": len(x), "n_test": len(xt), "class_counts": np.bincount(y).tolist(),
           "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
           "wall_seconds": time.perf_counter() - tic, "cpu_seconds": time.process_time() - cpu_tic,
           "clock": config.clock, "train_seconds": trainer.train_seconds,
           "epochs_done": trainer.epoch, "steps": trainer.step, "top1": final.get("top1"),
           "top5": final.get("top5"), "history": history, "augment": getattr(trainer.augment, "name", None),
           "optimizer": trainer.hp["optimizer"],
           "lars_mode": trainer.hp.get("lars_mode", DEFAULT_LARS_MODE) if trainer.hp["optimizer"] == "lars" else None,
           "step_losses": trainer.step_losses}
    print(f"{method}: {trainer.epoch} epochs, {trainer.step} steps, {trainer.train_seconds:.0f} s training "
          f"({config.clock} clock, augment {row['augment']}), kNN top-1 {row['top1']:.2f} top-5 {row['top5']:.2f} "
          f"(train {len(x)}, test {len(xt)})")
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args.dataset, args.data, args.n_train, args.n_test, args.long_tail,
                     args.long_tail_exponent, args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_epochs=args.warmup_epochs, budget_minutes=args.budget_minutes,
                         classes_per_batch=args.classes_per_batch, eval_every=args.eval_every, seed=args.seed,
                         device=args.device, clock=args.clock, checkpoint=args.checkpoint,
                         progress=not args.no_progress, lars_mode=args.lars_mode, augment=args.augment)
    return run(args.method, config, data, model_config(args), json_path=args.json)


if __name__ == "__main__":
    main()
