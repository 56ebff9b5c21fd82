"""Unsupervised post-processing of SMT image embeddings before the kNN, and k / T chosen on a
validation split: one fit, every variant scored on the same embeddings (CIFAR-10).

    python benchmarks/knn_postprocess.py --data ../shared/data [--n-train 10000] [--n-atoms 1024]
                                         [--n-components 128] [--pca 256 1024]

Variants (none uses a label, except the validation search, which uses training labels only):

* ``raw``: the embedding as ``SMT.transform`` returns it (the kNN L2-normalises it);
* ``centred``: minus the mean training embedding, then L2-normalised;
* ``pca P``: centred and projected on the top P principal directions of the training embeddings;
* ``pca P whitened``: the same, each direction divided by its standard deviation.

The k / T search holds out the last 10 % of the training images as queries against the other 90 %
(grid ``--k-grid`` x ``--t-grid``) and reports the test top-1 at the chosen pair, with all training
images as references, next to the fixed k 30 / T 0.03 of the paper's protocol.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _knn import WhitenedPCA, choose_k_temperature, validation_split  # noqa: E402

from smt import SMT  # noqa: E402
from smt.datasets import load_cifar10  # noqa: E402
from smt.knn import knn_accuracy  # noqa: E402


def top1(train, y_train, test, y_test, k=30, temperature=0.03):
    """Top-1 at (k, T) with every training embedding as reference."""
    return knn_accuracy(train, y_train, test, y_test, k=k, temperature=temperature, topk=(1,), device="cpu")["top1"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--n-atoms", type=int, default=1024)
    ap.add_argument("--n-components", type=int, default=128)
    ap.add_argument("--n-skip", type=int, default=8)
    ap.add_argument("--pca", type=int, nargs="*", default=[256, 1024])
    ap.add_argument("--k-grid", type=int, nargs="+", default=[10, 20, 30, 50, 100, 200])
    ap.add_argument("--t-grid", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.07, 0.1])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    x_train, y_train = load_cifar10(args.data, "train")
    x_test, y_test = load_cifar10(args.data, "test")
    x_train, y_train = x_train[:args.n_train], y_train[:args.n_train]
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    # knn_cifar.py's settings, K and d from the command line
    model = SMT(patch_size=6, n_atoms=args.n_atoms, coding="threshold", threshold=0.3,
                n_components=args.n_components, n_skip=args.n_skip, context="image", dict_epochs=0,
                random_state=args.seed, verbose=True)
    t0 = time.perf_counter()
    z_train = model.fit_transform(x_train)
    z_test = model.transform(x_test)
    print(f"fit and embed: {time.perf_counter() - t0:.0f} s, embedding {z_train.shape[1]}")

    mean = z_train.mean(axis=0, dtype=np.float64).astype(np.float32)
    variants = {"raw": (z_train, z_test), "centred": (z_train - mean, z_test - mean)}
    for p in args.pca:
        if p >= len(z_train):
            continue
        pca = WhitenedPCA(p).fit(z_train.copy())
        whitened_train, whitened_test = pca.transform(z_train).numpy(), pca.transform(z_test).numpy()
        std = pca.std_.numpy()
        variants[f"pca {p}"] = (whitened_train * std, whitened_test * std)
        variants[f"pca {p} whitened"] = (whitened_train, whitened_test)

    # k and T on a validation split of the training images (never the test set)
    queries, refs = validation_split(len(z_train), 1)
    print(f"\nCIFAR-10 kNN top-1, train {len(z_train)}, test {len(z_test)}, K {args.n_atoms}, "
          f"d {args.n_components}, seed {args.seed}")
    print("| variant | top-1 (k 30, T 0.03) | k, T chosen on validation (val top-1) | test top-1 at chosen |")
    print("|---|---|---|---|")
    results = {}
    for name, (tr, te) in variants.items():
        fixed = top1(tr, y_train, te, y_test)
        (k, t), best_val = choose_k_temperature(tr, y_train, queries, refs, args.k_grid, args.t_grid)
        chosen = top1(tr, y_train, te, y_test, k=k, temperature=t)
        results[name] = {"fixed": fixed, "k": k, "t": t, "val": best_val, "chosen": chosen}
        print(f"| {name} | {fixed:.2f} | k {k}, T {t} ({best_val:.2f}) | {chosen:.2f} |")
    return results


if __name__ == "__main__":
    main()
