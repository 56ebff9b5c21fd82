"""Bad input gets an error that names the problem."""
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from smt import SMT

from conftest import small_smt


@pytest.fixture(scope="module")
def fitted(digits):
    return small_smt().fit(digits[0][:300])


@pytest.mark.parametrize("shape", [(64,), (10, 64), (2, 3, 8, 8, 1)])
def test_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r"\(n, H, W\) or \(n, H, W, C\)"):
        small_smt().fit(np.zeros(shape))


def test_mixed_sizes():
    with pytest.raises(ValueError, match="mixed sizes.*image 2"):
        small_smt().fit([np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((9, 8))])


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "infinity")])
def test_nan_inf(digits, bad, word):
    X = digits[0][:50].copy()
    X[3, 2, 2] = bad
    with pytest.raises(ValueError, match=word):
        small_smt().fit(X)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "infinity")])
def test_nan_inf_in_the_last_block_of_a_float_tensor(digits, bad, word, monkeypatch):
    import smt._validation
    monkeypatch.setattr(smt._validation, "_FINITE_BLOCK", 64 * 3)  # 3 images of 8x8 per block
    X = torch.as_tensor(digits[0][:50] / 16.0, dtype=torch.float32)
    X[49, 7, 7] = bad
    with pytest.raises(ValueError, match=word):
        small_smt().fit(X)


def test_float_out_of_range(digits):
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        small_smt().fit(digits[0][:50] * 16)


def test_bad_dtype():
    with pytest.raises(ValueError, match="uint8"):
        small_smt().fit(np.zeros((5, 8, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="numeric"):
        small_smt().fit(np.array([[["a"] * 8] * 8] * 3))


def test_channels_first_hint():
    with pytest.raises(ValueError, match="channels-first"):
        small_smt().fit(torch.zeros(4, 3, 32, 32))


def test_smaller_than_patch():
    with pytest.raises(ValueError, match="smaller than a 6x6 patch"):
        SMT().fit(np.zeros((4, 5, 5), dtype=np.uint8))


def test_grid_smaller_than_pool():
    with pytest.raises(ValueError, match="pooling kernel"):
        SMT(patch_size=6).fit(np.zeros((4, 8, 8), dtype=np.uint8))


def test_too_few_patches_for_dictionary(digits):
    with pytest.raises(ValueError, match="n_atoms=5000 non-constant patches"):
        small_smt(n_atoms=5000).fit(digits[0][:20])


def test_too_many_components(digits):
    with pytest.raises(ValueError, match="n_components"):
        small_smt(n_atoms=16, n_components=20).fit(digits[0][:100])


def test_constant_images():
    with pytest.raises(ValueError, match="non-constant patches"):
        small_smt().fit(np.full((30, 8, 8), 0.5))


def test_transform_before_fit(digits):
    with pytest.raises(NotFittedError):
        small_smt().transform(digits[0][:5])


def test_transform_other_size(fitted):
    with pytest.raises(ValueError, match="9x9 with 1 channel.*fitted on 8x8 with 1"):
        fitted.transform(np.zeros((2, 9, 9)))


def test_transform_other_channels(fitted):
    with pytest.raises(ValueError, match="3 channel.*fitted on 8x8 with 1"):
        fitted.transform(np.zeros((2, 8, 8, 3)))


def test_no_images():
    with pytest.raises(ValueError, match="0 images"):
        small_smt().fit(np.zeros((0, 8, 8)))


@pytest.mark.parametrize("param", [dict(coding="sparse"), dict(context=0), dict(order=3), dict(n_atoms=0),
                                   dict(max_coherence=1.0), dict(max_coherence="0.35")])
def test_bad_parameters(digits, param):
    with pytest.raises(ValueError, match=list(param)[0]):
        small_smt(**param).fit(digits[0][:50])
