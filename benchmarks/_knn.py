"""The kNN benchmark shared by ``knn_mnist.py`` and ``knn_cifar.py``: fit SMT on the training
images, embed train and test, score the paper's weighted kNN, and print the time and peak
memory of each stage."""
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
from smt._device import resolve_device  # noqa: E402
from smt.augment import add_gray_copies, add_mirrors  # noqa: E402
from smt.knn import StreamingKNN  # noqa: E402


# SMT parameters the benchmark sets itself, or offers under another name
_OWN = {"random_state": "--seed", "checkpoint_path": "--checkpoint", "grayscale_augmentation": "--grayscale-aug",
        "verbose": None}
_HELP = {
    "context": "'image' or a radius in patches",
    "precision": "of the encode GEMM (bf16: similarities in bfloat16, compared in float32)",
    "max_coherence": "start the dictionary from patches with pairwise cosines at most this ([A]: 0.35)",
}


def _value(text):
    """A command-line value for a parameter whose default gives no type (None, or int | str)."""
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _smt_options(ap):
    """One option per ``SMT`` parameter, typed and defaulted from ``SMT().get_params()``: a new
    parameter of the estimator appears here by itself."""
    for name, default in sorted(SMT().get_params().items()):
        if name in _OWN:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_HELP.get(name))
        elif isinstance(default, (int, float)):
            ap.add_argument(flag, type=type(default), default=default, help=_HELP.get(name))
        else:
            ap.add_argument(flag, type=_value, default=default, help=_HELP.get(name))


def smt_params(args):
    """``SMT`` keyword arguments from parsed options."""
    params = {name: getattr(args, name) for name in SMT().get_params() if name not in _OWN}
    return {**params, "random_state": args.seed, "checkpoint_path": args.checkpoint, "verbose": True,
            "grayscale_augmentation": None if args.grayscale_aug == "copies" else args.grayscale_aug}


def parser(doc, **defaults):
    """Command-line options of a kNN benchmark; ``defaults`` are the data set's settings."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data root holding the data set folder (default: $SMT_DATA)")
    ap.add_argument("--n-train", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--n-test", type=int, default=None, help="first N test images (default: all)")
    _smt_options(ap)
    ap.add_argument("--knn-precision", choices=["float32", "bf16"], default="float32",
                    help="of the kNN's similarity GEMM (bf16: a bf16 screen, the float32 neighbours)")
    ap.add_argument("--grayscale-aug", nargs="?", const="paired", default=None,
                    choices=["paired", "independent", "copies"],
                    help="fit on gray copies too: 'paired' / 'independent' are SMT's grayscale_augmentation "
                         "(colour-only reference set); 'copies' appends them to the training set like "
                         "--flips (fit and kNN reference set). Default variant: paired")
    ap.add_argument("--flips", action=argparse.BooleanOptionalAction, default=False,
                    help="fit on train + mirrored train; the mirrors join the kNN reference set")
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="checkpoint file for the fit (resumes when present)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    ap.set_defaults(**defaults)
    return ap


def run(args, load, name, paper):
    """Run the benchmark.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser`.
    load : callable
        ``load(root, split) -> (images, labels)``.
    name : str
        Printed with the result.
    paper : str
        The paper's number(s), printed next to the result.

    Returns
    -------
    dict
        ``{"top1": ..., "top5": ...}``.
    """
    meter = StageMeter()
    with meter.stage("load"):
        x_train, y_train = load(args.data, "train")
        x_test, y_test = load(args.data, "test")
        x_train, y_train = x_train[:args.n_train], y_train[:args.n_train]
        x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
        if args.grayscale_aug == "copies":
            x_train, y_train = add_gray_copies(x_train, y_train)
        if args.flips:
            x_train, y_train = add_mirrors(x_train, y_train)
    model = SMT(**smt_params(args))
    chunk = 5000
    # The training embeddings stream through the kNN, never all in memory; they come from the codes
    # the fit computed (every training patch is encoded once).
    train_chunks = model.fit_transform_chunks(x_train, chunk_size=chunk)
    with meter.stage("fit (+ embed the first train chunk)"):
        first = next(train_chunks)
    with meter.stage("embed test"):
        z_test = model.transform(x_test)
    with meter.stage("embed train + kNN"):
        knn = StreamingKNN(z_test, k=args.k, temperature=args.temperature, device=args.device,
                           precision=args.knn_precision)
        del z_test  # the kNN holds its own normalised copy
        knn.update(first, y_train[:chunk])
        del first
        for i, z in enumerate(train_chunks, start=1):
            knn.update(z, y_train[i * chunk:(i + 1) * chunk])
        acc = knn.accuracy(y_test)
    # solo-learn's defaults (k 20, T 0.07), for comparison with other tables (spec 10-Q10)
    acc["top1_k20_t0.07"] = knn.accuracy(y_test, (1,), k=20, temperature=0.07)["top1"] if args.k >= 20 else None

    extras = [name for name, on in (("gray copies", args.grayscale_aug == "copies"), ("mirrors", args.flips)) if on]
    fitted_on = f"train {len(x_train)}" + (f" (with {' and '.join(extras)})" if extras else "")
    print(f"\n{name} kNN (k={args.k}, T={args.temperature}), {fitted_on}, test {len(x_test)}, "
          f"embedding {model.n_features_out_}")
    print(json.dumps({k: round(v, 3) for k, v in model.fit_stats_.items()}))
    print(meter.table())
    print(f"top-1 {acc['top1']:.2f}  top-5 {acc['top5']:.2f}   (paper: {paper})")
    if acc["top1_k20_t0.07"] is not None:
        print(f"top-1 with solo-learn's k 20, T 0.07: {acc['top1_k20_t0.07']:.2f}")
    if args.json:
        row = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} {torch.get_num_threads()} threads",
               "device": str(resolve_device(args.device)),
               "args": vars(args), "top1": acc["top1"], "top5": acc["top5"],
               "top1_k20_t0.07": acc["top1_k20_t0.07"], "fit_stats": model.fit_stats_,
               "stages": meter.rows, "n_features_out": int(model.n_features_out_),
               "atom_usage_nonzero": int(np.count_nonzero(model.atom_usage_))}
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return acc

