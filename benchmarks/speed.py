"""Speed of the SMT pipeline on CIFAR-10: the machine's matmul rate, the throughput of each stage,
the encode stage's FLOP rate as a fraction of the matmul rate, the eigen-solve next to a plain
``scipy.linalg.eigh``, and time / peak memory against the number of images and the dictionary size.

    python benchmarks/speed.py [--data DIR] [--device auto] [--n-images 5000 10000 25000 50000]
                               [--n-atoms 1024 2048 4096 8192] [--stage-images 512]

Images-scaling rows use the first ``--n-atoms``; atoms-scaling rows use the first ``--n-images``.
A row is a whole ``SMT.fit`` + ``transform`` of the training images (threshold codes t 0.3,
whole-image context, d 384 or fewer when K is small).
"""
import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StageMeter  # noqa: E402

from smt import SMT  # noqa: E402
from smt._device import resolve_device  # noqa: E402
from smt._validation import to_batch  # noqa: E402
from smt.coding import _similarity_blocks, block_rows, sparse_code, threshold_code  # noqa: E402
from smt.datasets import load_cifar10  # noqa: E402
from smt.patches import extract_patches  # noqa: E402
from smt.spectral import ContextStatistics, solve_embedding  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeat=3):
    fn()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - tic)
    return best


def matmul_rate(device, n=4096):
    """Dense float32 GEMM rate in FLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n ** 3 / _timed(lambda: a @ b, device)


def stage_table(images, n_atoms, device, peak):
    """Images/s of each stage on one batch, with the encode GEMM's FLOP rate."""
    model = SMT(n_atoms=n_atoms, n_components=min(384, n_atoms // 4), dict_epochs=0, random_state=0,
                device=str(device)).fit(images)
    batch = to_batch(images, device)
    patches, empty = extract_patches(batch, 6)
    w = torch.as_tensor(model.whitening_, dtype=torch.float32, device=device)
    phi = torch.as_tensor(model.dictionary_, device=device)
    x = patches.reshape(-1, patches.shape[-1])[~empty.reshape(-1)] @ w
    x = x / (x.norm(dim=1, keepdim=True) + 1e-9)
    idx, val = model._code(patches, empty, phi, device)
    n = len(images)
    rows = [("patches", _timed(lambda: extract_patches(batch, 6), device)),
            ("whiten", _timed(lambda: x @ w, device)),
            ("encode (threshold 0.3)", _timed(lambda: sparse_code(x, phi, "threshold", 0.3), device)),
            ("statistics", _timed(lambda: ContextStatistics(n_atoms, "image", 1, device).partial_fit(
                idx, val, ~empty), device, repeat=1)),
            ("embed (all stages)", _timed(lambda: model._embed(batch, device), device))]
    # The GEMM alone, in the coder's blocks: what is left of encode's time is the threshold pass
    # (compare, compaction), which reads every similarity once more.
    gemm_sec = _timed(lambda: [None for _ in _similarity_blocks(x, phi, block_rows(n_atoms, device))], device)
    encode_flop = 2 * x.shape[0] * x.shape[1] * n_atoms
    print(f"\nstage throughput, {n} CIFAR-10 images, K {n_atoms}, {int((idx >= 0).sum(-1).float().mean())} "
          f"active atoms per patch, device {device}")
    print(f"{'stage':<26}{'seconds':>10}{'images/s':>12}")
    for name, sec in rows:
        print(f"{name:<26}{sec:>10.3f}{n / sec:>12.0f}")
    encode_sec = rows[2][1]
    fraction = encode_flop / encode_sec / peak
    print(f"encode GEMM: {encode_flop / encode_sec / 1e9:.1f} GFLOP/s = {fraction:.2f} "
          f"of the matmul rate (goal >= 0.5)")
    compiled = threshold_code is not None and device.type == "cpu"
    print(f"  of which the GEMM alone, in the coder's blocks: {gemm_sec:.3f} s = "
          f"{encode_flop / gemm_sec / peak:.2f} of the matmul rate; threshold pass {encode_sec - gemm_sec:.3f} s "
          f"({'one compiled pass (numba)' if compiled else 'torch: compare, then nonzero'})")
    return model, fraction, encode_flop / gemm_sec / peak


def eigen_table(model, device):
    """The SMT solve next to a plain scipy.linalg.eigh of the same matrices."""
    stats = model._stats
    k = stats.n_atoms
    d = model.n_components
    tic = time.perf_counter()
    solve_embedding(stats.gram_, stats.context_, stats.n_patches_, d, model.n_skip, device)
    ours = time.perf_counter() - tic
    g = stats.gram_.cpu().numpy() / stats.n_patches_
    used = np.diag(g) > 0
    g = g[used][:, used] + np.eye(used.sum()) * 1e-6 * np.trace(g) / used.sum()
    m = stats.context_.cpu().numpy()[used][:, used] / stats.n_patches_
    tic = time.perf_counter()
    scipy.linalg.eigh(m, g)
    plain = time.perf_counter() - tic
    print(f"\neigen-solve, K {k} ({used.sum()} used), d {d}: SMT solver {ours:.2f} s; "
          f"plain scipy.linalg.eigh (all eigenpairs) {plain:.2f} s")


def _scaling_row(x, k, device):
    """One fit + embed; run in a fresh process so its peak memory is its own."""
    meter = StageMeter()
    model = SMT(n_atoms=k, n_components=min(384, k // 4), dict_max_patches=2_000_000, random_state=0,
                device=str(device))
    with meter.stage("fit + embed"):
        model.fit(x)
        for i in range(0, len(x), 5000):
            model.transform(x[i:i + 5000])
    _, sec, gib = meter.rows[-1]
    return sec, gib, model.fit_stats_


def scaling_rows(x, sizes, atoms, device):
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for n, k in [(n, atoms[0]) for n in sizes] + [(sizes[0], k) for k in atoms[1:]]:
        with spawn.Pool(1) as pool:
            sec, gib, fit_stats = pool.apply(_scaling_row, (x[:n], k, device))
        rows.append((n, k, sec, gib, fit_stats))
        print(f"{n:>8}{k:>7}{sec:>10.1f}{gib:>10.2f}{sec / n * 1000:>12.2f}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stage-images", type=int, default=512)
    ap.add_argument("--stage-atoms", type=int, default=8192)
    ap.add_argument("--n-images", type=int, nargs="+", default=[5000, 10000, 25000, 50000])
    ap.add_argument("--n-atoms", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    x, _ = load_cifar10(args.data, "train")
    peak = matmul_rate(device)
    print(f"device {device}, torch threads {torch.get_num_threads()}: dense float32 matmul "
          f"{peak / 1e9:.1f} GFLOP/s")
    model, fraction, gemm_fraction = stage_table(x[:args.stage_images], args.stage_atoms, device, peak)
    eigen_table(model, device)
    print("\nscaling (fit + embed of the training images, each row in a fresh process; threshold 0.3, "
          "whole image, Algorithm 1 on <= 2M patches)")
    print(f"{'images':>8}{'K':>7}{'seconds':>10}{'peak GiB':>10}{'ms/image':>12}")
    rows = scaling_rows(x, args.n_images, args.n_atoms, device)
    return {"matmul_flops": peak, "encode_fraction": fraction, "encode_gemm_fraction": gemm_fraction,
            "scaling": rows}


if __name__ == "__main__":
    main()
