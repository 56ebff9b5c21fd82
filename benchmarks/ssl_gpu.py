"""The GPU-sized experiments of ``ssl-part2.md`` (CARP, ManifoldCLR, H-SSL) in one command, within ~10 minutes on one H100/H200.

    python benchmarks/gpu_data.py --data ../shared/data     # on a machine with the data: data/gpu (46 MiB)
    python benchmarks/ssl_gpu.py [--data data/gpu] [--scale 1.0] [--json runs/ssl_gpu.jsonl]
    python benchmarks/ssl_gpu.py --report runs/ssl_gpu.jsonl

Reads the carried subset (first 10,000 CIFAR-10 training images, 2,000 test images: the full 50k do
not fit the 64 MiB that travel to a device machine) and trains, each for a fixed *wall-clock* budget
of training time on the GPU (bf16 autocast, losses in fp32), batch 512, ResNet-18 width 64:

| run | what | budget s |
|---|---|---|
| simclr | the project's SimCLR (LARS, tau 0.2), reference for CARP | 60 |
| simclr, --lars-mode scaled | the same with solo-learn's LARS step (``ssl-part2.md`` A1 at GPU size) | 50 |
| carp | CARP, K 4096, N_B 128, EMA 0.99 | 70 |
| simclr_adamw | SimCLR of ManifoldCLR's harness (AdamW 3e-3 at batch 512, tau 0.5) | 60 |
| manifoldclr | ManifoldCLR, the paper's config: M 32, 8 blocks of 64, J 20, zeta 0.01 | 90 |
| hssl / assl / hssl_unstructured | P4-ResNet-18 width 16 (C4), tau 0.1 | 50 each |

480 s of training in all at ``--scale 1`` (plus loading, kNN evaluations every 10 epochs and the
final one, ~1 min); ``--scale`` multiplies every budget. Each row gets kNN top-1 (k 30, T 0.03) on
backbone features every 10 epochs, and the method's loss terms (CARP's consistency, uniformity,
block entropy, view agreement; ManifoldCLR's operator loss against ``||z1 - z0||^2``, KL, share of
zero coefficients). The schedule (warmup + cosine) runs over each budget, so a short budget is a
complete, if short, run. The 1000-epoch settings of the papers need hours, not minutes.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from smt.ssl import TrainConfig
from smt.ssl import train as ssl_train

RUNS = [  # (method, budget seconds, TrainConfig settings, ModelConfig settings)
    ("simclr", 60, {}, {}),
    ("simclr", 50, {"lars_mode": "scaled"}, {}),
    ("carp", 70, {}, {"carp_k": 4096, "carp_block": 128, "carp_ema": 0.99}),
    ("simclr_adamw", 60, {}, {}),
    ("manifoldclr", 90, {}, {"mclr_operators": 32, "mclr_block": 64, "mclr_samples": 20}),
    ("hssl", 50, {}, {"p4_width": 16}),
    ("assl", 50, {}, {"p4_width": 16}),
    ("hssl_unstructured", 50, {}, {"p4_width": 16}),
]
# the same runs at toy sizes (--smoke)
SMOKE_MODEL = {"width": 2, "proj_hidden": 16, "carp_k": 64, "carp_block": 16, "mclr_operators": 4, "mclr_block": 4,
               "mclr_samples": 2, "p4_width": 1}


def load(data: Path):
    x = np.load(data / "cifar10_train_x.npy")
    y = np.load(data / "cifar10_train_y.npy")
    xt = np.load(data / "cifar10_test_x.npy")
    yt = np.load(data / "cifar10_test_y.npy")
    return x, y, xt, yt


def table(rows) -> str:
    lines = ["| method | LARS | device | train s | epochs | steps | kNN top-1 | top-5 | kNN along the way (epoch: top-1) | loss terms (last epoch) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        along = ", ".join(f"{h['epoch']}: {h['top1']:.1f}" for h in r["history"] if h.get("top1") is not None)
        logs = ", ".join(f"{k} {v:.3g}" for k, v in r["history"][-1].get("logs", {}).items())
        lines.append(f"| {r['method']} | {r.get('lars_mode') or ''} | {r['device']} | {r['train_seconds']:.0f} | {r['epochs_done']} | "
                     f"{r['steps']} | {r['top1']:.2f} | {r['top5']:.2f} | {along} | {logs} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/gpu")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every budget")
    ap.add_argument("--only", nargs="*", default=None, help="a subset of the runs, by method name")
    ap.add_argument("--epochs", type=int, default=1000, help="planned epochs (warmup: 10 %% of the budget)")
    ap.add_argument("--json", default="runs/ssl_gpu.jsonl")
    ap.add_argument("--report", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="a seconds-long CPU check of the script itself: tiny networks, 256 images, 2-s budgets")
    args = ap.parse_args(argv)
    if args.report:
        print(table([json.loads(line) for line in open(args.report)]))
        return
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: this script is for a GPU machine (the CPU experiments: benchmarks/ssl_vs_smt.py)")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    data = load(Path(args.data))
    device, batch_size, model_size = "cuda", 512, {"width": 64}
    if args.smoke:
        data = (data[0][:256], data[1][:256], data[2][:128], data[3][:128])
        device, batch_size, model_size = "cpu", 64, SMOKE_MODEL
        torch.set_num_threads(1)
        args.scale = 2 / 60
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu (smoke)"
    print(f"{gpu}: train {len(data[0])}, test {len(data[2])}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    rows, tic = [], time.perf_counter()
    for method, budget, train_kw, model_kw in RUNS:
        if args.only and method not in args.only:
            continue
        config = TrainConfig(epochs=args.epochs, batch_size=batch_size, budget_minutes=budget * args.scale / 60,
                             eval_every=10, device=device, progress=False, **train_kw)
        row = ssl_train.run(method, config, data, ssl_train.ModelConfig(**{**model_kw, **model_size}))
        row["gpu"] = gpu
        if torch.cuda.is_available():
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  ({time.perf_counter() - tic:.0f} s so far)", flush=True)
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
