"""kNN top-1 of SMT on MNIST (fit on the 60,000 training images, query the 10,000 test images).

    python benchmarks/knn_mnist.py [--data DIR] [--n-train N] [--n-atoms K] ...

Prints the accuracy and the time and peak memory of each stage. Paper: 99.3.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StageMeter  # noqa: E402

from smt import SMT  # noqa: E402
from smt.datasets import load_mnist  # noqa: E402
from smt.knn import knn_accuracy  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data root holding mnist/ (default: $SMT_DATA)")
    ap.add_argument("--n-train", type=int, default=60000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--n-atoms", type=int, default=4096)
    ap.add_argument("--coding", default="one_sparse")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--n-nonzero", type=int, default=1)
    ap.add_argument("--n-components", type=int, default=32)
    ap.add_argument("--n-skip", type=int, default=1)
    ap.add_argument("--context", default="3", help="'image' or a radius in patches")
    ap.add_argument("--order", type=int, default=1)
    ap.add_argument("--whiten-eps", type=float, default=1e-3)
    ap.add_argument("--dict-epochs", type=int, default=1)
    ap.add_argument("--dict-max-patches", type=int, default=None)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=0.03)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="checkpoint file for the fit (resumes when present)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)
    context = args.context if args.context == "image" else int(args.context)

    meter = StageMeter()
    with meter.stage("load"):
        x_train, y_train = load_mnist(args.data, "train")
        x_test, y_test = load_mnist(args.data, "test")
        x_train, y_train = x_train[:args.n_train], y_train[:args.n_train]
        x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    model = SMT(patch_size=6, n_atoms=args.n_atoms, coding=args.coding, threshold=args.threshold,
                n_nonzero=args.n_nonzero, n_components=args.n_components, n_skip=args.n_skip,
                context=context, order=args.order, whiten_eps=args.whiten_eps, dict_epochs=args.dict_epochs,
                dict_max_patches=args.dict_max_patches, batch_size=args.batch_size, device=args.device,
                random_state=args.seed, verbose=True, checkpoint_path=args.checkpoint)
    with meter.stage("fit"):
        model.fit(x_train)
    with meter.stage("embed test"):
        z_test = model.transform(x_test)
    chunk = 5000

    def train_chunks():  # the training embeddings stream through the kNN, never all in memory
        for i in range(0, len(x_train), chunk):
            yield model.transform(x_train[i:i + chunk]), y_train[i:i + chunk]

    with meter.stage("embed train + kNN"):
        acc = knn_accuracy(train_chunks(), None, z_test, y_test, k=args.k, temperature=args.temperature)

    print(f"\nMNIST kNN (k={args.k}, T={args.temperature}), train {len(x_train)}, test {len(x_test)}, "
          f"embedding {model.n_features_out_}")
    print(json.dumps({k: round(v, 3) for k, v in model.fit_stats_.items()}))
    print(meter.table())
    print(f"top-1 {acc['top1']:.2f}  top-5 {acc['top5']:.2f}   (paper: 99.3)")
    if args.json:
        row = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} {torch.get_num_threads()} threads",
               "args": vars(args), "top1": acc["top1"], "top5": acc["top5"], "fit_stats": model.fit_stats_,
               "stages": meter.rows}
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return acc


if __name__ == "__main__":
    main()
