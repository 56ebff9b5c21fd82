"""Speed of the SMT pipeline on CIFAR-10: the machine's matmul rates (float32, bfloat16, int8), the
throughput of each stage, the encode stage's FLOP rate as a fraction of the matmul rate at the
precision it uses, the statistics' pair rate, the eigen-solve next to a plain ``scipy.linalg.eigh``,
the default estimator on a small data set, and time / peak memory against the number of images and
the dictionary size.

    python benchmarks/speed.py [--data DIR] [--device auto] [--n-images 5000 10000 25000 50000]
                               [--n-atoms 1024 2048 4096 8192] [--atoms-images 10000 50000]
                               [--stage-images 512] [--flagship-images 1000]

Images-scaling rows use the first ``--n-atoms``; atoms-scaling rows are run at each ``--atoms-images``.
A row is a whole ``SMT.fit_transform`` of the training images in chunks (threshold codes t 0.3,
whole-image context, d 384 or fewer when K is small), in a fresh process so that its peak memory
is its own.
"""
import argparse
import multiprocessing
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StageMeter  # noqa: E402

from smt import SMT  # noqa: E402
from smt._device import native_bf16, resolve_device  # noqa: E402
from smt._validation import to_batch  # noqa: E402
from smt.coding import _similarity_blocks, block_rows, sparse_code, threshold_code  # noqa: E402
from smt.datasets import load_cifar10, load_mnist  # noqa: E402
from smt.knn import StreamingKNN  # noqa: E402
from smt.patches import extract_patches  # noqa: E402
from smt.spectral import solve_embedding  # noqa: E402
from smt.statistics import ContextStatistics  # noqa: E402


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


def matmul_rate(device, n=4096, dtype=torch.float32):
    """Dense GEMM rate in FLOP/s (int8: int32 products, ``torch._int_mm``; None where torch has none)."""
    if dtype == torch.int8:
        a = torch.randint(-100, 100, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-100, 100, (n, n), dtype=torch.int8, device=device)
        try:
            return 2 * n ** 3 / _timed(lambda: torch._int_mm(a, b), device)
        except (RuntimeError, AttributeError):
            return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _timed(lambda: a @ b, device)


def knn_gemm_rates(device, bf16, queries=1024, references=5000, dim=55296):
    """FLOP/s of the kNN's similarity GEMM (a query batch against a reference chunk of CIFAR-sized
    embeddings) in float32 and, with ``bf16``, bfloat16 (else None)."""
    rates = {"bfloat16": None}
    for dtype in (torch.float32, torch.bfloat16) if bf16 else (torch.float32,):
        q = torch.randn(queries, dim, device=device, dtype=dtype)
        r = torch.randn(references, dim, device=device, dtype=dtype)
        rates[str(dtype).split(".")[-1]] = 2 * queries * references * dim / _timed(lambda: q @ r.T, device, repeat=2)
    return rates


def knn_screen(model, images, n_queries, chunk, device):
    """The kNN in float32 and with the bf16 screen on real embeddings: seconds, the fraction of
    similarities the screen sends back to float32, and whether both give the same neighbours."""
    z = model.transform(images)
    queries, refs = z[:n_queries], z[n_queries:]
    labels = np.zeros(len(refs), dtype=np.int64)  # the timing and the neighbours need no classes
    out = {}
    for precision in ("float32", "bf16"):
        last = {}

        def run():
            last["knn"] = StreamingKNN(queries, k=30, device=device, precision=precision)
            for start in range(0, len(refs), chunk):
                last["knn"].update(refs[start:start + chunk], labels[start:start + chunk])
        sec = _timed(run, device, repeat=1)  # its warm-up compiles the rescoring kernel
        out[precision] = (sec, last["knn"])
    (sec32, f32), (sec16, bf16) = out["float32"], out["bf16"]
    screened = bf16.n_queries * max(bf16.n_references - chunk, 1)
    i32, i16 = f32.neighbors()[2], bf16.neighbors()[2]
    same = bool(torch.equal(i32, i16))
    # The screen rescores a pair's similarity in float64 and rounds it; the float32 GEMM rounds its own
    # way, so two references within float32 rounding of each other can trade ranks (same neighbours).
    same_sets = bool(torch.equal(i32.sort(dim=1).values, i16.sort(dim=1).values))
    swapped = int((i32 != i16).sum())
    verdict = "identical" if same else (f"the same sets, {swapped} of {i32.numel()} ranks in another order "
                                        f"(near-ties within float32 rounding)" if same_sets else "DIFFER")
    print(f"\nkNN on real embeddings ({len(queries)} queries x {len(refs)} references of "
          f"{z.shape[1]} features, chunks of {chunk}): float32 {sec32:.2f} s, bf16 screen {sec16:.2f} s "
          f"({sec32 / sec16:.2f}x); rescored {100 * bf16.n_rescored / screened:.2f} % of the screened "
          f"similarities; neighbours {verdict}")
    return {"float32_seconds": sec32, "bf16_seconds": sec16,
            "rescored_fraction": bf16.n_rescored / screened, "same_neighbours": same,
            "same_neighbour_sets": same_sets, "reordered_ranks": swapped}


def _codes_differ(a, b, k):
    """Fraction of (patch, atom) memberships that differ between two padded codes, over a's active ones."""
    def keys(idx):
        valid = idx >= 0
        rows = torch.arange(len(idx), device=idx.device)[:, None].expand_as(idx)
        return (rows[valid] * k + idx[valid]).cpu().numpy()
    ka = keys(a)
    return len(np.setxor1d(ka, keys(b), assume_unique=True)) / max(len(ka), 1)


def stage_table(images, n_atoms, device, peak, peak_bf16=None):
    """Images/s of each stage on one batch, with the encode GEMM's FLOP rate and the statistics' pair rate."""
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
    stats = ContextStatistics(n_atoms, "image", 1, device)
    stats.partial_fit(idx[:1], val[:1], ~empty[:1])  # allocate the sums (and compile) outside the timing
    rows = [("patches", _timed(lambda: extract_patches(batch, 6), device)),
            ("whiten", _timed(lambda: x @ w, device)),
            ("encode (threshold 0.3)", _timed(lambda: sparse_code(x, phi, "threshold", 0.3), device)),
            ("encode (bf16 GEMM)", _timed(lambda: sparse_code(x, phi, "threshold", 0.3, precision="bf16"), device)),
            ("statistics (counts)", _timed(lambda: stats.partial_fit(idx, val, ~empty), device, repeat=1)),
            ("embed (all stages)", _timed(lambda: model._embed(batch, device), device))]
    # The GEMM alone, in the coder's blocks: what is left of encode's time is the threshold pass
    # (compare, compaction), which reads every similarity once more.
    gemm_sec = _timed(lambda: [None for _ in _similarity_blocks(x, phi, block_rows(n_atoms, device))], device)
    encode_flop = 2 * x.shape[0] * x.shape[1] * n_atoms
    active = (idx >= 0).sum(-1)[~empty].double()
    pairs = float((active * active).sum())  # pair updates of G: (active atoms)^2 per patch
    print(f"\nstage throughput, {n} CIFAR-10 images, K {n_atoms}, {float(active.mean()):.0f} "
          f"active atoms per patch, device {device}")
    print(f"{'stage':<26}{'seconds':>10}{'images/s':>12}")
    for name, sec in rows:
        print(f"{name:<26}{sec:>10.3f}{n / sec:>12.0f}")
    encode_sec, bf16_sec, stats_sec = rows[2][1], rows[3][1], rows[4][1]
    fraction = encode_flop / encode_sec / peak
    print(f"encode GEMM: {encode_flop / encode_sec / 1e9:.1f} GFLOP/s = {fraction:.2f} "
          f"of the float32 matmul rate (goal >= 0.5)")
    compiled = threshold_code is not None and device.type == "cpu"
    print(f"  of which the GEMM alone, in the coder's blocks: {gemm_sec:.3f} s = "
          f"{encode_flop / gemm_sec / peak:.2f} of the matmul rate; threshold pass {encode_sec - gemm_sec:.3f} s "
          f"({'one compiled pass (numba)' if compiled else 'torch: compare, then nonzero'})")
    bf16_idx, _ = sparse_code(x, phi, "threshold", 0.3, precision="bf16")
    f32_idx, _ = sparse_code(x, phi, "threshold", 0.3)
    differ = _codes_differ(f32_idx, bf16_idx, n_atoms)
    print(f"encode with precision='bf16': {encode_sec / bf16_sec:.2f}x the float32 encode"
          + (f", {encode_flop / bf16_sec / peak_bf16:.2f} of the bf16 matmul rate" if peak_bf16 else "")
          + f"; {100 * differ:.3f} % of the active (patch, atom) pairs differ from float32's")
    print(f"statistics: {pairs / stats_sec / 1e9:.2f} G pair updates/s ({pairs / len(active):.0f} per patch); "
          f"statistics / encode seconds = {stats_sec / encode_sec:.2f} (goal <= 1)")
    return model, {"encode_fraction": fraction, "encode_gemm_fraction": encode_flop / gemm_sec / peak,
                   "bf16_speedup": encode_sec / bf16_sec, "bf16_code_difference": differ,
                   "pair_rate": pairs / stats_sec, "statistics_over_encode": stats_sec / encode_sec}


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
        for _ in model.fit_transform_chunks(x, chunk_size=5000):
            pass
    _, sec, gib = meter.rows[-1]
    return sec, gib, model.fit_stats_


def _flagship_row(x):
    """``SMT(random_state=0).fit(X)`` with every other parameter at its default."""
    meter = StageMeter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with meter.stage("fit"):
            model = SMT(random_state=0).fit(x)
    _, sec, gib = meter.rows[-1]
    return sec, gib, model.fit_stats_, [str(w.message) for w in caught]


def _in_fresh_process(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def scaling_rows(x, sizes, atoms, atoms_images, device):
    rows = []
    plan = [(n, atoms[0]) for n in sizes] + [(n, k) for n in atoms_images for k in atoms[1:]]
    for n, k in dict.fromkeys(plan):
        sec, gib, fit_stats = _in_fresh_process(_scaling_row, x[:n], k, device)
        rows.append((n, k, sec, gib, fit_stats))
        print(f"{n:>8}{k:>7}{sec:>10.1f}{gib:>10.2f}{sec / n * 1000:>12.2f}"
              f"{fit_stats['statistics_seconds']:>12.1f}{fit_stats['mean_active_atoms']:>9.0f}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stage-images", type=int, default=512)
    ap.add_argument("--stage-atoms", type=int, default=8192)
    ap.add_argument("--n-images", type=int, nargs="+", default=[5000, 10000, 25000, 50000])
    ap.add_argument("--n-atoms", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--atoms-images", type=int, nargs="+", default=[10000, 50000],
                    help="image counts at which every --n-atoms beyond the first is run")
    ap.add_argument("--flagship-images", type=int, default=1000,
                    help="MNIST images for SMT(random_state=0).fit, every other parameter at its default (0: skip)")
    ap.add_argument("--knn-queries", type=int, default=1000)
    ap.add_argument("--knn-references", type=int, default=4000,
                    help="embedded with the stage table's model; 0: skip the kNN comparison")
    ap.add_argument("--knn-chunk", type=int, default=1000)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    x, _ = load_cifar10(args.data, "train")
    peak = matmul_rate(device)
    # Without bf16 matrix units PyTorch emulates the bf16 GEMM (0.4 GFLOP/s on an AVX2 core) and int8
    # runs near 1 GOP/s: there the two rates are measured at n 1024, since 4096 would take many minutes.
    native = native_bf16(device)
    n_low = 4096 if native else 1024
    peak_bf16, peak_int8 = matmul_rate(device, n_low, torch.bfloat16), matmul_rate(device, n_low, torch.int8)
    print(f"device {device}, torch threads {torch.get_num_threads()}: dense matmul float32 "
          f"{peak / 1e9:.1f} GFLOP/s, bfloat16 {peak_bf16 / 1e9:.1f} GFLOP/s"
          + ("" if native else " (emulated: no bf16 matrix units; bf16 and int8 at n 1024)") + ", int8 "
          + (f"{peak_int8 / 1e9:.1f} GOP/s" if peak_int8 else "not offered"))
    model, rates = stage_table(x[:args.stage_images], args.stage_atoms, device, peak, peak_bf16)
    knn = knn_gemm_rates(device, bf16=native)
    print(f"kNN similarity GEMM (1024 queries x 5000 references x 55296): float32 {knn['float32'] / 1e9:.1f}, "
          + (f"bfloat16 {knn['bfloat16'] / 1e9:.1f} GFLOP/s" if native else "GFLOP/s; bfloat16 not measured"))
    rates["knn_gemm"] = knn
    if args.knn_references:
        n_q = args.knn_queries
        rates["knn_screen"] = knn_screen(model, x[-(n_q + args.knn_references):], n_q,
                                         args.knn_chunk, device)
    eigen_table(model, device)
    flagship = None
    if args.flagship_images:
        mnist, _ = load_mnist(args.data, split="train")
        sec, gib, fit_stats, warned = _in_fresh_process(_flagship_row, mnist[:args.flagship_images])
        flagship = (sec, gib)
        print(f"\nSMT(random_state=0).fit on {args.flagship_images} MNIST images (defaults: K 8192, t 0.3): "
              f"{sec:.1f} s, peak {gib:.2f} GiB; {fit_stats['mean_active_atoms']:.0f} active atoms per patch; "
              f"statistics {fit_stats['statistics_seconds']:.1f} s, solve {fit_stats['solve_seconds']:.1f} s"
              + (f"; warned: {warned[0][:80]}..." if warned else ""))
    print("\nscaling (fit_transform of the training images, each row in a fresh process; threshold 0.3, "
          "whole image, Algorithm 1 on <= 2M patches)")
    print(f"{'images':>8}{'K':>7}{'seconds':>10}{'peak GiB':>10}{'ms/image':>12}{'stats s':>12}{'active':>9}")
    rows = scaling_rows(x, args.n_images, args.n_atoms, args.atoms_images, device)
    return {"matmul_flops": peak, "matmul_flops_bf16": peak_bf16, "matmul_ops_int8": peak_int8, **rates,
            "flagship": flagship, "scaling": rows}


if __name__ == "__main__":
    main()
