"""kNN top-1 of SMT on MNIST: fit on the 60,000 training images, query the 10,000 test images.

    python benchmarks/knn_mnist.py [--data DIR] [--n-train N] [--n-atoms K] ...

Prints the accuracy and the time and peak memory of each stage. Paper: 99.3.
Defaults are the best MNIST settings measured so far (benchmarks/RESULTS.md): 7x7 patches (99.11;
6x6: 99.02), K 4096, 1-sparse codes, d 32, a 7x7 context window (r 3), whitening eps 0.1.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _knn  # noqa: E402

from smt.datasets import load_mnist  # noqa: E402


def main(argv=None):
    ap = _knn.parser(__doc__, members=[(7, 0.3)], rgb=False, n_atoms=4096, coding="one_sparse", n_components=32,
                     context="3", whiten_eps=0.1)
    return _knn.run(ap.parse_args(argv), load_mnist, "MNIST", "99.3")


if __name__ == "__main__":
    main()
