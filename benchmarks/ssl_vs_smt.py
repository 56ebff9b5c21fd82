"""kNN top-1 against wall-clock: deep SSL baselines (smt.ssl) and SMT, same data, same machine, same run.

    python benchmarks/ssl_vs_smt.py --data ../shared/data [--n-train 5000] [--n-test 2000]
        [--budget-minutes M] [--methods simclr vicreg msn pmsn carp manifoldclr simclr_adamw hssl assl
        hssl_unstructured] [--skip-smt] [--threads 1]
        [--json runs/ssl_vs_smt.jsonl] [--plot runs/ssl_vs_smt.png]
    python benchmarks/ssl_vs_smt.py --report runs/ssl_vs_smt.jsonl [--plot runs/ssl_vs_smt.png]

SMT is fitted first (``benchmarks/_knn.py``, the settings of the reduced CIFAR runs: K 1024,
threshold 0.3, d 128, n_skip 8, whole-image context); its time (loading, fit, embedding of train and
test, kNN; wall-clock, or CPU time of the process with ``--clock process``) is the budget of every deep method unless ``--budget-minutes`` is given. Each deep method then
trains until its budget of *training* time is spent (its kNN evaluations every ``--eval-every``
epochs are not counted) and is scored with the same kNN (k 30, T 0.03) on backbone features.
Every run appends one JSON line; ``--report`` prints the markdown table and draws the plot from them,
so methods can be run in separate processes.

Each deep method trains with its own augmentation recipe (``smt.ssl.augment.RECIPES``: SimCLR
"simclr", VICReg "vicreg", MSN / PMSN / H-SSL "asymmetric", CARP "carp", ManifoldCLR and its
same-harness SimCLR "manifoldclr"; ``--augment NAME`` gives every method one recipe) and its own
optimiser (LARS, by default in part 1's "unscaled" form, or AdamW); the table states both. ManifoldCLR is compared with
``simclr_adamw`` (AdamW, temperature 0.5), the SimCLR of its own harness, as the paper did. H-SSL,
A-SSL and the unstructured control run on the C4-equivariant ResNet-18 (``--p4-width``).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _knn  # noqa: E402

from smt.datasets import load_cifar10  # noqa: E402
from smt.ssl import TrainConfig  # noqa: E402
from smt.ssl import train as ssl_train  # noqa: E402

NAMES = {"smt": "SMT", "simclr": "SimCLR", "vicreg": "VICReg", "msn": "MSN", "pmsn": "PMSN", "carp": "CARP",
         "manifoldclr": "ManifoldCLR", "simclr_adamw": "SimCLR (AdamW, ManifoldCLR's harness)",
         "hssl": "H-SSL (C4)", "assl": "A-SSL (C4)", "hssl_unstructured": "H-SSL, unstructured"}
ALL_METHODS = ["simclr", "vicreg", "msn", "pmsn", "carp", "manifoldclr", "simclr_adamw", "hssl", "assl",
               "hssl_unstructured"]


def run_smt(args) -> dict:
    """Fit SMT with the benchmark's protocol; returns a row with its time and accuracy."""
    smt_args = _knn.parser(None, n_atoms=args.smt_n_atoms, coding="threshold", n_components=args.smt_d,
                           context="image").parse_args(
        ["--data", str(args.data), "--n-train", str(args.n_train), "--n-test", str(args.n_test),
         "--n-skip", str(args.smt_n_skip), "--seed", str(args.seed), "--device", args.device])
    tic, cpu_tic = time.perf_counter(), time.process_time()
    acc = _knn.run(smt_args, load_cifar10, "CIFAR-10", "81.1 at full scale")
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu_tic
    spent = wall if args.clock == "wall" else cpu
    return {"method": "smt", "backbone": f"SMT K {args.smt_n_atoms}, d {args.smt_d}, n_skip {args.smt_n_skip}",
            "wall_seconds": wall, "cpu_seconds": cpu, "clock": args.clock, "train_seconds": spent,
            "top1": acc["top1"], "top5": acc["top5"],
            "epochs_done": 1, "steps": None, "n_train": args.n_train, "n_test": args.n_test,
            "threads": torch.get_num_threads(), "history": [{"train_seconds": spent, "top1": acc["top1"]}]}


def run_deep(args, method: str, budget_minutes: float, data) -> dict:
    """Train one deep method for ``budget_minutes`` of training time (smt.ssl.train)."""
    config = TrainConfig(epochs=args.epochs, budget_minutes=budget_minutes, eval_every=args.eval_every,
                         seed=args.seed, device=args.device, clock=args.clock, progress=False, augment=args.augment)
    return ssl_train.run(method, config, data, ssl_train.model_config(args))


def table(rows: list[dict]) -> str:
    lines = ["| method | backbone | augment | optimiser | device, threads | clock | budget s | train s | wall s (all) "
             "| epochs | steps | kNN top-1 | top-5 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = r.get("config", r.get("args", {})).get("budget_minutes")  # "args": rows before stop 15
        opt = r.get("optimizer") or ""
        opt += f" ({r['lars_mode']})" if r.get("lars_mode") else ""
        lines.append(f"| {NAMES.get(r['method'], r['method'])} | {r['backbone']} | {r.get('augment') or ''} | {opt} | "
                     f"{r.get('device', 'cpu')}, "
                     f"{r['threads']} | {r.get('clock', 'wall')} | {'' if budget is None else f'{60 * budget:.0f}'} | {r['train_seconds']:.0f} | "
                     f"{r['wall_seconds']:.0f} | {r['epochs_done']} | {r['steps'] if r['steps'] is not None else ''} | {r['top1']:.2f} | "
                     f"{r['top5']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in rows:
        pts = [(h["train_seconds"], h["top1"]) for h in r["history"] if h.get("top1") is not None]
        if r["method"] == "smt":
            ax.scatter(*zip(*pts), marker="*", s=200, color="k", label="SMT (one pass)", zorder=3)
        else:
            ax.plot(*zip(*pts), marker="o", label=NAMES.get(r["method"], r["method"]))
    clock = rows[0].get("clock", "wall")
    ax.set_xlabel("training seconds (" + ("wall-clock" if clock == "wall" else "CPU time of the process") + ")")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title(f"CIFAR-10, train {rows[0]['n_train']}, test {rows[0]['n_test']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)  # outside: the curves stay visible
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--methods", nargs="*", default=ALL_METHODS, choices=ALL_METHODS)
    ap.add_argument("--augment", default=None, help="one augmentation recipe for every method (default: each its own)")
    ap.add_argument("--skip-smt", action="store_true")
    ap.add_argument("--budget-minutes", type=float, default=None, help="default: SMT's time")
    ap.add_argument("--epochs", type=int, default=100, help="planned epochs (warmup = 10 %% of them)")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--smt-n-atoms", type=int, default=1024)
    ap.add_argument("--smt-d", type=int, default=128)
    ap.add_argument("--smt-n-skip", type=int, default=8)
    ap.add_argument("--json", default="runs/ssl_vs_smt.jsonl")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--report", default=None, help="only print the table / plot of this JSON-lines file")
    ssl_train.add_model_arguments(ap)
    args = ap.parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in open(args.report)]
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        rows = []

        def record(row):  # each row as it finishes: a killed run keeps what it measured
            rows.append(row)
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")

        budget = args.budget_minutes
        if not args.skip_smt:
            record(run_smt(args))
            budget = budget or rows[0]["train_seconds"] / 60
        if budget is None:
            ap.error("--skip-smt needs --budget-minutes")
        data = ssl_train.load_data("cifar10", args.data, args.n_train, args.n_test) if args.methods else None
        for m in args.methods:
            record(run_deep(args, m, budget, data))
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
