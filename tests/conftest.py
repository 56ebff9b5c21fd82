import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits as images in [0, 1] and labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images / 16.0, d.target


@pytest.fixture(scope="session")
def data_root():
    root = os.environ.get("SMT_DATA") or (str(SHARED_DATA) if SHARED_DATA.exists() else None)
    if root is None or not (Path(root) / "mnist").exists():
        pytest.skip("no MNIST copy: set SMT_DATA or place ../shared/data beside the checkout")
    return root


def small_smt(**kw):
    """SMT settings that fit 8x8 digits in a fraction of a second."""
    from smt import SMT
    params = dict(patch_size=3, n_atoms=32, coding="one_sparse", n_components=6, context=1,
                  pool_size=3, pool_stride=1, dict_batch_size=512, batch_size=128, random_state=0)
    params.update(kw)
    return SMT(**params)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_fitted(digits):
    """``small_smt()`` fitted on the first 120 digits, shared: copy it before changing it."""
    return small_smt().fit(digits[0][:120])
