"""LARS's effective learning rate (``ssl-part2.md`` A1): loss curves and kNN of the three LARS forms.

    python benchmarks/ssl_lars.py --data ../shared/data [--methods simclr vicreg]
        [--modes unscaled scaled clipped] [--budget-minutes 1.5] [--augment asymmetric]
        [--json runs/ssl_lars.jsonl] [--plot runs/ssl_lars.png]
    python benchmarks/ssl_lars.py --report runs/ssl_lars.jsonl [--plot runs/ssl_lars.png]

``unscaled`` is part 1's LARS (unclipped, eta 0.02: about lr x solo-learn's step), ``scaled`` the
unclipped form with eta 0.02 / peak lr (solo-learn's step at the peak wherever its clip is inactive),
``clipped`` solo-learn's ``clip_lr`` with the momentum cleared when the warmup ends. One augmentation
recipe for every run (default the part-1 one) so that only the optimiser differs.
"""
import argparse
import json

import torch

from smt.ssl import TrainConfig
from smt.ssl import train as ssl_train


def table(rows) -> str:
    lines = ["| method | LARS | steps | loss step 1 | loss at 25 % | loss at 50 % | final loss (mean of last 5) | kNN top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ls = r["step_losses"]
        n = len(ls)
        if not n:
            lines.append(f"| {r['method']} | {r['lars_mode']} | {r.get('diverged', 'no steps')} ||||||")
            continue
        lines.append(f"| {r['method']} | {r['lars_mode']} | {n} | {ls[0]:.3f} | {ls[n // 4]:.3f} | "
                     f"{ls[n // 2]:.3f} | {sum(ls[-5:]) / len(ls[-5:]):.3f} | {r['top1']:.2f} |")
    return "\n".join(lines)


def plot(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = sorted({r["method"] for r in rows})
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.5), squeeze=False)
    for ax, m in zip(axes[0], methods):
        for r in rows:
            if r["method"] == m:
                ax.plot(range(1, len(r["step_losses"]) + 1), r["step_losses"],
                        label=f"{r['lars_mode']} (kNN {r['top1']:.1f})")
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--methods", nargs="*", default=["simclr", "vicreg"])
    ap.add_argument("--modes", nargs="*", default=["unscaled", "scaled", "clipped"])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--budget-minutes", type=float, default=1.5)
    ap.add_argument("--epochs", type=int, default=100, help="planned epochs (warmup = 10 %% of the budget)")
    ap.add_argument("--augment", default="asymmetric")
    ap.add_argument("--json", default="runs/ssl_lars.jsonl")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--report", default=None)
    ssl_train.add_model_arguments(ap)
    args = ap.parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in open(args.report)]
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        rows = []
        data = ssl_train.load_data("cifar10", args.data, args.n_train, args.n_test)
        for m in args.methods:
            for mode in args.modes:
                config = TrainConfig(epochs=args.epochs, budget_minutes=args.budget_minutes, eval_every=0,
                                     lars_mode=mode, augment=args.augment, seed=args.seed, device=args.device,
                                     clock=args.clock, progress=False)
                try:
                    row = ssl_train.run(m, config, data, ssl_train.model_config(args))
                except FloatingPointError as e:   # a diverged run is a result too
                    print(e)
                    row = {"method": m, "lars_mode": mode, "step_losses": [], "top1": float("nan"),
                           "diverged": str(e)}
                rows.append(row)
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
