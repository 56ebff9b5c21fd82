"""Train a deep SSL baseline on CIFAR and score it with the SMT paper's kNN protocol.

    python -m smt.ssl.train --method simclr --dataset cifar10 --epochs N [--budget-minutes M]
        [--data DIR] [--n-train N] [--n-test N] [--width W] [--classes-per-batch K]
        [--long-tail N_MAX] [--checkpoint FILE] [--json FILE]

Prints the kNN top-1 / top-5 every ``--eval-every`` epochs and a final line;
``--json`` appends the run (arguments, history, final accuracy) as one line.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from smt.datasets import load_cifar10, load_cifar100

from . import METHODS, build_method
from .augment import RECIPES
from .base import TrainConfig, Trainer
from .optim import DEFAULT_LARS_MODE, LARS_MODES
from .sampler import long_tailed_indices


def add_model_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Backbone sizes, seed, device, threads and clock: the options of this runner that the
    comparison benchmarks (``benchmarks/ssl_*.py``) also take and pass on with :func:`model_argv`."""
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 = ResNet-18)")
    ap.add_argument("--vit-dim", type=int, default=192)
    ap.add_argument("--vit-depth", type=int, default=12)
    ap.add_argument("--vit-heads", type=int, default=3)
    ap.add_argument("--n-prototypes", type=int, default=1024, help="MSN / PMSN prototypes")
    ap.add_argument("--carp-k", type=int, default=4096, help="CARP prototypes K")
    ap.add_argument("--carp-block", type=int, default=128, help="CARP prototypes per block N_B")
    ap.add_argument("--carp-ema", type=float, default=0.99, help="CARP teacher momentum at the start (-> 1)")
    ap.add_argument("--mclr-operators", type=int, default=32, help="ManifoldCLR operators M")
    ap.add_argument("--mclr-block", type=int, default=64, help="ManifoldCLR operator block size d")
    ap.add_argument("--mclr-samples", type=int, default=20, help="ManifoldCLR max-ELBO samples J")
    ap.add_argument("--p4-width", type=int, default=16, help="channels per fibre of the C4 ResNet (H-SSL, A-SSL)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="budget in wall-clock or in CPU seconds of this process (fair on a shared CPU)")
    return ap


def model_argv(args: argparse.Namespace) -> list[str]:
    """The options of :func:`add_model_arguments` (but threads, set by the caller's process) as argv."""
    return ["--width", str(args.width), "--vit-dim", str(args.vit_dim), "--vit-depth", str(args.vit_depth),
            "--vit-heads", str(args.vit_heads), "--n-prototypes", str(args.n_prototypes),
            "--carp-k", str(args.carp_k), "--carp-block", str(args.carp_block), "--carp-ema", str(args.carp_ema),
            "--mclr-operators", str(args.mclr_operators), "--mclr-block", str(args.mclr_block),
            "--mclr-samples", str(args.mclr_samples), "--p4-width", str(args.p4_width),
            "--seed", str(args.seed), "--device", args.device, "--clock", args.clock]


def method_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`smt.ssl.build_method` for ``args.method``."""
    kw = dict(width=args.width, vit_dim=args.vit_dim, vit_depth=args.vit_depth, vit_heads=args.vit_heads,
              proj_hidden=args.proj_hidden, n_prototypes=args.n_prototypes, carp_k=args.carp_k,
              carp_block=args.carp_block, p4_width=args.p4_width, seed=args.seed)
    if args.method == "carp":
        kw["ema"] = (args.carp_ema, 1.0)
    if args.method == "manifoldclr":
        kw.update(n_operators=args.mclr_operators, operator_block=args.mclr_block, n_samples=args.mclr_samples)
    return kw


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
    ap.add_argument("--proj-hidden", type=int, default=None)
    ap.add_argument("--lars-mode", choices=list(LARS_MODES), default=None,
                    help="LARS variant (default: unscaled, part 1's form; scaled: solo-learn's step at the peak)")
    ap.add_argument("--augment", choices=sorted(RECIPES), default=None,
                    help="augmentation recipe (default: the method's own)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", default=None)
    return ap


def load_data(args):
    """Training images / labels (maybe subset or long-tailed) and the kNN test split."""
    load = load_cifar10 if args.dataset == "cifar10" else load_cifar100
    x, y = load(args.data, "train")
    xt, yt = load(args.data, "test")
    if not args.long_tail:  # a long-tailed subset is drawn from the whole training set
        x, y = x[:args.n_train], y[:args.n_train]
    else:
        keep = long_tailed_indices(y, args.long_tail, args.long_tail_exponent, seed=args.seed)
        x, y = x[keep], y[keep]
    return x, y, xt[:args.n_test], yt[:args.n_test]


def run(args, data=None) -> dict:
    """Train and evaluate one method; returns the JSON row.

    ``data``: ``(x, y, x_test, y_test)`` already in memory (default: :func:`load_data`).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, xt, yt = load_data(args) if data is None else data
    method = build_method(args.method, **method_kwargs(args))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_epochs=args.warmup_epochs, budget_minutes=args.budget_minutes,
                      classes_per_batch=args.classes_per_batch, eval_every=args.eval_every, seed=args.seed,
                      device=args.device, clock=args.clock, checkpoint=args.checkpoint,
                      progress=not args.no_progress, lars_mode=args.lars_mode, augment=args.augment)
    tic, cpu_tic = time.perf_counter(), time.process_time()
    trainer = Trainer(method, cfg)
    history = trainer.fit(x, y, xt, yt)
    final = history[-1]
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
           "threads": torch.get_num_threads(), "device": str(trainer.device), "args": vars(args),
           "n_train": len(x), "n_test": len(xt), "class_counts": np.bincount(y).tolist(),
           "params_M": sum(p.numel() for p in method.parameters()) / 1e6,
           "wall_seconds": time.perf_counter() - tic, "cpu_seconds": time.process_time() - cpu_tic,
           "clock": args.clock, "train_seconds": trainer.train_seconds,
           "epochs_done": trainer.epoch, "steps": trainer.step, "top1": final.get("top1"),
           "top5": final.get("top5"), "history": history, "augment": getattr(trainer.augment, "name", None),
           "optimizer": trainer.hp["optimizer"],
           "lars_mode": trainer.hp.get("lars_mode", DEFAULT_LARS_MODE) if trainer.hp["optimizer"] == "lars" else None,
           "step_losses": trainer.step_losses}
    print(f"{args.method}: {trainer.epoch} epochs, {trainer.step} steps, {trainer.train_seconds:.0f} s training "
          f"({args.clock} clock, augment {row['augment']}), kNN top-1 {row['top1']:.2f} top-5 {row['top5']:.2f} "
          f"(train {len(x)}, test {len(xt)})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def main(argv=None, data=None) -> dict:
    return run(parser().parse_args(argv), data)


if __name__ == "__main__":
    main()
