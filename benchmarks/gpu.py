"""Everything a GPU machine should measure, in one command that ends within 10 minutes on one H100/H200.

    python benchmarks/gpu_data.py --data ../shared/data     # on a machine with the data: data/gpu, 46 MiB
    python benchmarks/gpu.py [--data data/gpu]              # on the GPU machine, data/gpu carried along

1. checks CUDA and runs the CUDA tests (``tests/test_cuda.py``, and the statistics tests);
2. the stage table of ``speed.py`` on CUDA (512 CIFAR-10 images, K 8192);
3. MNIST, full 60k / 10k, ``knn_mnist.py``'s defaults on CUDA;
4. CIFAR-10 at the paper's setting (K 8192, d 384, t 0.3, whole image, sampled dictionary, n_skip 8,
   mirrors in fit and reference set) on the carried subset (first 10,000 training images + mirrors,
   2,000 test images);

and prints one table: each stage's seconds and images/s, and the whole-CIFAR-10 time (50,000 + mirrors
against 10,000) extrapolated from them. The extrapolation is linear in the images for the code
statistics and the embeddings (both are sums over images), and in train x test images for the kNN;
the front end (whitening and dictionary, on the first 10,000 images) and the eigen-solve do not grow.
"""
import argparse
import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import knn_mnist  # noqa: E402
import speed  # noqa: E402

from smt import SMT  # noqa: E402
from smt.augment import add_mirrors  # noqa: E402
from smt.knn import StreamingKNN  # noqa: E402

FULL_TRAIN, FULL_TEST = 100_000, 10_000  # CIFAR-10's 50,000 training images with their mirrors


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def cifar_rows(root, n_atoms, n_components, device):
    x, y = np.load(root / "cifar10_train_x.npy"), np.load(root / "cifar10_train_y.npy")
    xt, yt = np.load(root / "cifar10_test_x.npy"), np.load(root / "cifar10_test_y.npy")
    x, y = add_mirrors(x, y)
    model = SMT(n_atoms=n_atoms, n_components=n_components, threshold=0.3, context="image", dict_epochs=0,
                n_skip=8, device=str(device), random_state=0)
    tic = time.perf_counter()
    chunks = model.fit_transform_chunks(x, chunk_size=5000)
    first = next(chunks)
    _sync(device)
    fit = model.fit_stats_
    embed_first = time.perf_counter() - tic - sum(fit[k] for k in ("whitening_seconds", "dictionary_seconds",
                                                                  "statistics_seconds", "solve_seconds"))
    tic = time.perf_counter()
    z_test = model.transform(xt)
    _sync(device)
    test_sec = time.perf_counter() - tic
    knn = StreamingKNN(z_test, k=30, temperature=0.03, device=device)
    knn_sec, tic = 0.0, time.perf_counter()
    for i, z in enumerate(itertools.chain([first], chunks)):  # next() embeds a chunk from the kept codes
        t0 = time.perf_counter()
        knn.update(z, y[i * 5000:(i + 1) * 5000])
        _sync(device)
        knn_sec += time.perf_counter() - t0
    acc = knn.accuracy(yt)
    embed_train = embed_first + time.perf_counter() - tic - knn_sec
    n, nt = len(x), len(xt)
    rows = [("front end (whitening + dictionary)", fit["whitening_seconds"] + fit["dictionary_seconds"], None, 1.0),
            ("statistics (encode + counts)", fit["statistics_seconds"], n, FULL_TRAIN / n),
            ("eigen-solve", fit["solve_seconds"], None, 1.0),
            ("embed train (kept codes)", embed_train, n, FULL_TRAIN / n),
            ("embed test (encode + embed)", test_sec, nt, FULL_TEST / nt),
            ("kNN", knn_sec, nt, FULL_TRAIN * FULL_TEST / (n * nt))]
    return rows, acc, n, nt, fit.get("mean_active_atoms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/gpu", help="the folder benchmarks/gpu_data.py wrote")
    ap.add_argument("--n-atoms", type=int, default=8192)
    ap.add_argument("--n-components", type=int, default=384)
    ap.add_argument("--stage-images", type=int, default=512)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to try the script itself on tiny settings")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this script measures the GPU path (torch.cuda.is_available() is False)")
    root = Path(args.data)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}", flush=True)
    if not args.skip_tests:
        tests = [str(HERE.parent / "tests" / f) for f in ("test_cuda.py", "test_statistics.py")]
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests])
        print(f"CUDA tests: {'passed' if code == 0 else f'FAILED (exit {code})'}", flush=True)
    peak = speed.matmul_rate(device)
    print(f"dense float32 matmul {peak / 1e12:.1f} TFLOP/s")
    speed.stage_table(np.load(root / "cifar10_train_x.npy")[:args.stage_images], args.n_atoms, device, peak)
    table = []
    if not args.skip_mnist:
        tic = time.perf_counter()
        acc = knn_mnist.main(["--data", str(root), "--device", str(device)])
        _sync(device)
        table.append(("MNIST 60k/10k, fit + embed + kNN", time.perf_counter() - tic, 70_000, 1.0))
        print(f"MNIST top-1 {acc['top1']:.2f}", flush=True)
    rows, acc, n, nt, active = cifar_rows(root, args.n_atoms, args.n_components, device)
    table += rows
    print(f"\nCIFAR-10, K {args.n_atoms}, d {args.n_components}, t 0.3 ({active:.0f} active atoms per patch), mirrors: "
          f"train {n}, test {nt}: top-1 {acc['top1']:.2f} (subset; not comparable with the paper's 81.1)")
    print(f"\n{'stage':<40}{'seconds':>9}{'images/s':>11}{'full CIFAR-10 s (extrapolated)':>33}")
    total = 0.0
    for name, sec, images, scale in table:
        rate = f"{images / sec:>11.0f}" if images else f"{'':>11}"
        full = sec * scale if name.startswith(("front", "statistics", "eigen", "embed", "kNN")) else None
        total += full or 0.0
        print(f"{name:<40}{sec:>9.1f}{rate}" + (f"{full:>33.1f}" if full is not None else ""))
    print(f"{'whole CIFAR-10 (50k + mirrors / 10k), extrapolated':<60}{total:>33.1f}")
    return {"table": table, "top1": acc["top1"], "cifar10_seconds_extrapolated": total}


if __name__ == "__main__":
    main()
