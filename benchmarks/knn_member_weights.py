"""kNN top-1 of a union of SMTs over a grid of member weights, from one encoding (CIFAR-10).

    python benchmarks/knn_member_weights.py --data ../shared/data --patch-size 6 4 6 --threshold 0.3 0.45 0.45 \\
        --view color color gray --pool-size 7 5 7 --pool-stride 4 3 4 [--checkpoint PATH] [--step 0.1]

The members are ``knn_cifar.py``'s (the same options, defaults and checkpoints). A union puts its
members' unit-norm embeddings side by side, member ``m`` times a weight ``w_m`` (``knn_cifar.py
--member-weight``), so the kNN's cosine is ``sum_m a_m s_m`` with ``a_m = w_m^2 / sum w^2`` and
``s_m`` member ``m``'s cosine. Each member's cosines to the test images, and to the queries of a
validation split of the training set (the last 10 % of the original images against the others and
their copies, as ``knn_cifar.py``'s k / T choice), are computed once and kept on disk (``--sims``);
every ``a`` of a grid is then scored from them: the simplex at ``--step`` (``a_m = 0`` drops member
``m``), plus equal weights over every subset of the members (the unions ``knn_cifar.py`` runs).

The weights are chosen on the validation split (ties: the more even weights), never on the test
set; the test top-1 of every grid point is printed beside it, at the paper's k 30 / T 0.03 unless
``--k`` / ``--temperature`` say otherwise. The cosines are float32 products whatever
``--knn-precision`` says (a bfloat16 product rounds its output to 8 significant bits, too coarse
for a vote at T 0.03), so the equal-weight rows are ``knn_cifar.py``'s float32 kNN.
"""
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import FeatureUnion

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _knn  # noqa: E402
import knn_cifar  # noqa: E402
from _measure import StageMeter  # noqa: E402

from smt.datasets import load_cifar10  # noqa: E402


def weight_grid(n_members, step):
    """The member shares ``a`` to score, shape (G, n_members), each row summing to 1: the simplex at
    ``step`` and equal shares over every non-empty subset, without repeats."""
    n = round(1 / step)
    if not np.isclose(n * step, 1):
        raise SystemExit(f"--step must be 1 / n for a whole n, got {step}")
    rows = [np.array(c) / n for c in itertools.product(range(n + 1), repeat=n_members) if sum(c) == n]
    for r in range(1, n_members + 1):
        for subset in itertools.combinations(range(n_members), r):
            a = np.zeros(n_members)
            a[list(subset)] = 1 / r
            rows.append(a)
    grid = np.unique(np.round(np.array(rows), 12), axis=0)
    return grid[np.lexsort(grid.T[::-1])]


def weighted_top1(sims, shares, labels, truth, k, temperature, columns=None, row_chunk=500):
    """Top-1 (percent) of the paper's weighted kNN for every row of ``shares``.

    Parameters
    ----------
    sims : list of array, each (n_queries, n_references)
        One cosine matrix per member (may be ``numpy.memmap``).
    shares : ndarray of shape (G, n_members)
    labels : ndarray of int, shape (n_references,)
        The labels of the references, or of ``columns`` where given.
    truth : ndarray of int, shape (n_queries,)
    columns : ndarray of int, optional
        The references to vote among (default: all).

    Returns
    -------
    ndarray of shape (G,)
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n_classes = int(labels.max()) + 1
    correct = np.zeros(len(shares), np.int64)
    n = sims[0].shape[0]
    for start in range(0, n, row_chunk):
        blocks = [torch.from_numpy(np.ascontiguousarray(
            s[start:start + row_chunk] if columns is None else s[start:start + row_chunk][:, columns],
            dtype=np.float32)) for s in sims]
        y = torch.as_tensor(np.asarray(truth[start:start + row_chunk]), dtype=torch.int64)
        for g, a in enumerate(shares):
            combined = None
            for share, block in zip(a, blocks):
                if share:
                    combined = block * float(share) if combined is None else combined.add_(block, alpha=float(share))
            top, idx = combined.topk(k, dim=1)
            # the largest similarity subtracted: the same vote, no overflow of exp at T 0.03
            votes = torch.zeros(len(top), n_classes).scatter_add_(
                1, labels[idx], torch.exp((top - top[:, :1]) / temperature))
            correct[g] += int((votes.argmax(1) == y).sum())
    return 100.0 * correct / n


def build_parser(**defaults):
    """``knn_cifar.py``'s options (its defaults, changed by ``defaults``) and this script's."""
    ap = _knn.parser(__doc__, **{**knn_cifar.DEFAULTS, **defaults})
    ap.add_argument("--step", type=_knn._at_least(float, 0, strict=True), default=0.1,
                    help="grid step of the member shares a_m (default 0.1)")
    ap.add_argument("--sims", default=None,
                    help="folder for the cosine matrices, (test + validation queries) x train per member, "
                         "float32 (default: a temporary folder; 10,000 x 100,000 is 4 GB)")
    return ap


def run(args, load):
    """Score every weighting of the union ``args`` asks for.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`build_parser`.
    load : callable
        ``load(root, split) -> (images, labels)``.

    Returns
    -------
    dict
        ``shares`` (G, n_members), ``val_top1`` and ``test_top1`` (G,), and ``chosen``, the row
        chosen on the validation split.
    """
    grid = weight_grid(len(_knn.member_settings(args)), args.step)
    chosen = _knn.resolve_precisions(args)
    if chosen:
        print(chosen)
    model = _knn.build_model(args)
    if not isinstance(model, FeatureUnion):
        raise SystemExit("member weights need two or more members: give several --patch-size, --threshold "
                         "or --view values")
    if args.member_weight is not None:
        raise SystemExit("--member-weight is what this script chooses: leave it out")
    meter = StageMeter()
    x_train, y_train, x_test, y_test, n_originals = _knn.load_images(args, load)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    probes, refs = _knn.validation_split(n_originals, len(x_train) // n_originals)
    chunk = args.chunk_size
    stream = _knn.fit_transform_chunks(model, x_train, chunk)
    with meter.stage("fit (+ embed the first train chunk)"):
        first = next(stream)
    bounds = np.cumsum([0] + [int(m.n_features_out_) for _, m in model.transformer_list])
    names = [name for name, _ in model.transformer_list]

    def split(z):
        """Per member, unit rows."""
        z = torch.as_tensor(z)
        return [torch.nn.functional.normalize(z[:, lo:hi], dim=1) for lo, hi in zip(bounds[:-1], bounds[1:])]

    with meter.stage("embed test and validation queries"):
        queries = split(np.vstack([_knn.transform_chunks(model, x_test, chunk),
                                   _knn.transform_chunks(model, x_train[probes], chunk)]))
    folder = Path(args.sims or tempfile.mkdtemp(prefix="smt_sims_"))
    folder.mkdir(parents=True, exist_ok=True)
    sims = [np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32,
                                      shape=(len(queries[0]), len(x_train))) for name in names]
    with meter.stage("embed train + cosines"):
        for start, z in zip(itertools.count(0, chunk), itertools.chain([first], stream)):
            for s, q, r in zip(sims, queries, split(z)):
                s[:, start:start + len(r)] = (q @ r.T).numpy()
        del first, queries
        for s in sims:
            s.flush()
    n_test = len(x_test)
    with meter.stage(f"score {len(grid)} weightings"):
        test = weighted_top1([s[:n_test] for s in sims], grid, y_train, y_test, args.k, args.temperature)
        val = weighted_top1([s[n_test:] for s in sims], grid, y_train[refs], y_train[probes],
                            args.k, args.temperature, columns=refs)
    # ties on validation: the shares closest to even
    spread = np.abs(grid - 1 / len(names)).sum(1)
    best = max(range(len(grid)), key=lambda g: (val[g], -spread[g]))
    print(f"\nkNN (k={args.k}, T={args.temperature}) over member shares a_m = w_m^2 / sum w^2, "
          f"train {len(x_train)}{' (with mirrors)' if args.flips else ''}, test {n_test}, validation "
          f"{len(probes)} queries against {len(refs)} references; members {names}")
    print(meter.table())
    print(" | ".join(f"a {n}" for n in names) + " | validation top-1 | test top-1")
    for g in np.argsort(-val, kind="stable"):
        mark = "  <- chosen on validation" if g == best else ""
        print(" | ".join(f"{a:.3f}" for a in grid[g]) + f" | {val[g]:.2f} | {test[g]:.2f}{mark}")
    weights = np.sqrt(grid[best] / grid[best].max())
    print(f"chosen on validation: shares {np.round(grid[best], 3).tolist()} (--member-weight "
          f"{' '.join(f'{w:.4g}' for w in weights)}): validation {val[best]:.2f}, test top-1 {test[best]:.2f}; "
          f"equal weights over all members: test {test[np.argmin(spread)]:.2f}; best test top-1 on the grid "
          f"(chosen on the test set, not a result): {test.max():.2f}")
    if args.json:
        row = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "members": names,
               "shares": grid.tolist(), "val_top1": val.tolist(), "test_top1": test.tolist(),
               "chosen": grid[best].tolist(), "member_weight": weights.tolist(), "stages": meter.rows}
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return {"shares": grid, "val_top1": val, "test_top1": test, "chosen": best}


def main(argv=None):
    return run(build_parser().parse_args(argv), load_cifar10)


if __name__ == "__main__":
    main()
