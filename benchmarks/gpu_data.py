"""Write the small data folder that travels to a GPU machine with the code (at most 64 MiB there).

    python benchmarks/gpu_data.py [--data DIR] [--out data/gpu]

Writes MNIST's four official files (11 MB, read there by ``load_mnist``) and the first 10,000
CIFAR-10 training and 2,000 test images with their labels as uint8 / int64 ``.npy`` (37 MB).
``data/`` is ignored by git: name the folder in the device tool's ``carry``.
"""
import argparse
import shutil
from pathlib import Path

import numpy as np

from smt.datasets import load_cifar10, load_mnist
from smt.datasets._base import data_home

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data root with mnist/ and cifar10/ (default: $SMT_DATA)")
    ap.add_argument("--out", default="data/gpu")
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "mnist").mkdir(parents=True, exist_ok=True)
    load_mnist(args.data, split="test")  # checks the files (and downloads them when missing)
    for name in MNIST_FILES:
        shutil.copyfile(data_home(args.data, "mnist", MNIST_FILES) / name, out / "mnist" / name)
    for split, n in (("train", args.n_train), ("test", args.n_test)):
        x, y = load_cifar10(args.data, split)
        np.save(out / f"cifar10_{split}_x.npy", np.ascontiguousarray(x[:n]))
        np.save(out / f"cifar10_{split}_y.npy", np.asarray(y[:n], dtype=np.int64))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
