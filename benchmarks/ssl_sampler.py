"""Mini-batch class content and cluster priors (Assran et al., ICLR 2023) on CIFAR-10.

    python benchmarks/ssl_sampler.py --data ../shared/data [--n-train 5000] [--n-test 2000]
        [--budget-minutes 3] [--imbalanced-k 1] [--long-tail 1000] [--only balance|prior]
        [--json runs/ssl_sampler.jsonl]
    python benchmarks/ssl_sampler.py --report runs/ssl_sampler.jsonl

Two experiments, each run scored by the SMT paper's kNN top-1 (k 30, T 0.03) on the test images:

* balance: SimCLR, VICReg, MSN and CARP (``--balance-methods``) trained on the first ``--n-train`` training images with
  class-balanced batches (``ClassBatchSampler`` K = 10: every batch holds all classes in equal
  shares) and class-imbalanced ones (K = ``--imbalanced-k``). The paper's finding: volume-maximising
  methods lose accuracy with class-imbalanced batches.
* prior: MSN (uniform prior) and PMSN (power-law prior, tau 0.25) on a long-tailed CIFAR-10 subset,
  class c keeping ``N_MAX * (c+1)^-1`` images (1000, 500, ..., 100: 2,927 images), shuffled batches.
  The paper's finding: the power-law prior helps on long-tailed data.

Every run gets the same training-time budget; the table states it.
"""
import argparse
import json
import sys

import torch

from smt.ssl import TrainConfig
from smt.ssl import train as ssl_train

NAMES = {"simclr": "SimCLR", "vicreg": "VICReg", "msn": "MSN", "pmsn": "PMSN", "carp": "CARP"}


def configs(args):
    """(experiment, method, data settings, TrainConfig settings) of every run."""
    runs = []
    if args.only in (None, "balance"):
        for m in args.balance_methods:
            for k in (10, args.imbalanced_k):
                runs.append(("balance", m, {"n_train": args.n_train}, {"classes_per_batch": k}))
    if args.only in (None, "prior"):
        for m in ("msn", "pmsn"):
            runs.append(("prior", m, {"long_tail": args.long_tail, "long_tail_exponent": 1.0}, {}))
    return runs


def table(rows):
    lines = [f"| experiment | method | train set | batches | budget s ({rows[0].get('clock', 'wall')}) | epochs | steps | kNN top-1 | top-5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["config"]
        train = (f"long-tailed {r['n_train']} ({r['class_counts'][0]}..{r['class_counts'][-1]} per class)"
                 if r["data"].get("long_tail") else f"first {r['n_train']}")
        k = c["classes_per_batch"]
        batches = "shuffled" if k is None else (f"K={k} (balanced)" if k == 10 else f"K={k} (imbalanced)")
        lines.append(f"| {r['experiment']} | {NAMES[r['method']]} | {train} | {batches} | "
                     f"{60 * c['budget_minutes']:.0f} | {r['epochs_done']} | {r['steps']} | {r['top1']:.2f} | "
                     f"{r['top5']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--budget-minutes", type=float, default=3.0)
    ap.add_argument("--epochs", type=int, default=100, help="planned epochs (warmup = 10 %% of them)")
    ap.add_argument("--imbalanced-k", type=int, default=1)
    ap.add_argument("--balance-methods", nargs="*", default=["simclr", "vicreg", "msn", "carp"],
                    choices=sorted(NAMES), help="methods of the balance experiment (CARP: its block-uniformity "
                    "term is a uniform prior too)")
    ap.add_argument("--long-tail", type=int, default=1000, metavar="N_MAX")
    ap.add_argument("--only", choices=["balance", "prior"], default=None)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--json", default="runs/ssl_sampler.jsonl")
    ap.add_argument("--report", default=None)
    ssl_train.add_model_arguments(ap)
    args = ap.parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in open(args.report)]
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        rows = []
        for exp, method, data_kw, train_kw in configs(args):
            print(f"== {exp}: {method} {data_kw} {train_kw}", flush=True)
            data = ssl_train.load_data("cifar10", args.data, n_test=args.n_test, seed=args.seed, **data_kw)
            config = TrainConfig(epochs=args.epochs, budget_minutes=args.budget_minutes, eval_every=args.eval_every,
                                 seed=args.seed, device=args.device, clock=args.clock, progress=False, **train_kw)
            row = ssl_train.run(method, config, data, ssl_train.model_config(args))
            row.update(experiment=exp, data=data_kw)
            rows.append(row)
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
