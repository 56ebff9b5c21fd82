"""HierarchicalSMT: a second SMT layer on the first layer's pooled maps."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from smt import SMT, HierarchicalSMT
from smt._io import ModelFileError
from smt.patches import extract_patches


@pytest.fixture(scope="module")
def digits():
    return (load_digits().images / 16.0)[:600]


def _first():
    return SMT(patch_size=3, n_atoms=64, coding="one_sparse", n_components=8, pool_size=2, pool_stride=1)


def _second():
    return SMT(patch_size=2, center_patches=False, n_atoms=32, coding="top_k", n_nonzero=2, n_components=4,
               pool_size=2, pool_stride=1)


@pytest.fixture(scope="module")
def fitted(digits):
    return HierarchicalSMT(_first(), _second(), chunk_size=250, random_state=0).fit(digits)


def test_shapes_and_both_parts_at_unit_norm_times_the_weight(digits, fitted):
    # 8x8 digits: 6x6 patch grid, pooled 2/1 to a 5x5 map of d 8; second: 4x4 grid, pooled to 3x3 of d 4.
    assert fitted.map_shape_ == (5, 5, 8)
    assert fitted.n_features_out_ == 200 + 36
    z = fitted.set_params(second_weight=0.5).transform(digits[:50])
    assert z.shape == (50, 236) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z[:, :200], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z[:, 200:], axis=1), 0.5, rtol=1e-5)
    assert fitted.set_params(output="second").transform(digits[:5]).shape == (5, 36)
    fitted.set_params(output="both", second_weight=1.0)


@pytest.mark.parametrize("front", [None, 200])
def test_second_layer_is_an_smt_fitted_on_the_maps_by_hand(digits, fitted, front):
    """The chunked fit gives the model of one SMT fit on the first layer's maps, rescaled to
    [0, 1] and laid out (n, H_p, W_p, d) by hand: with 250-image chunks and the second layer's
    front end on all 600 maps (one partial_fit call), and with a front end of 200 maps (chunks of
    150: one call of 300 maps, then two of 150)."""
    if front is not None:
        fitted = HierarchicalSMT(_first(), _second().set_params(front_end_images=front), chunk_size=150,
                                 random_state=0).fit(digits)
    z1 = fitted.first_.transform(digits)
    maps = (z1.reshape(len(z1), 8, 5, 5).transpose(0, 2, 3, 1) + 1) / 2
    by_hand = _second().set_params(random_state=0, front_end_images=front or 10000).fit(maps)
    np.testing.assert_array_equal(fitted.second_.components_, by_hand.components_)
    np.testing.assert_array_equal(fitted.second_.dictionary_, by_hand.dictionary_)
    z = fitted.set_params(output="second").transform(digits[:40])
    fitted.set_params(output="both")
    np.testing.assert_allclose(z, by_hand.transform(maps[:40]), rtol=1e-6, atol=1e-7)


def test_a_second_layer_that_drops_its_statistics_is_fitted_on_every_chunk(digits):
    """keep_statistics=False on the second layer: its three partial_fit calls (a front end of 200
    maps, chunks of 150) still add up to the model that keeps them, and the statistics are gone
    afterwards, as for an SMT fitted alone."""
    def fit(keep):
        second = _second().set_params(front_end_images=200, keep_statistics=keep)
        return HierarchicalSMT(_first(), second, chunk_size=150, random_state=0).fit(digits)
    lean, full = fit(False), fit(True)
    np.testing.assert_array_equal(lean.second_.components_, full.second_.components_)
    assert lean.second_.keep_statistics is False and lean.first_.keep_statistics is True
    with pytest.raises(ValueError, match="keep_statistics=False"):
        lean.second_.partial_fit(np.asarray(lean._maps(lean.first_.transform(digits[:20]), lean.first_)))


def test_same_seed_same_embedding(digits, fitted):
    again = HierarchicalSMT(_first(), _second(), chunk_size=600, random_state=0).fit(digits)
    np.testing.assert_array_equal(again.transform(digits[:30]), fitted.transform(digits[:30]))


def test_save_and_load_round_trip(tmp_path, digits, fitted):
    path = tmp_path / "h.npz"
    fitted.save(path)
    loaded = HierarchicalSMT.load(path)
    np.testing.assert_array_equal(loaded.transform(digits[:20]), fitted.transform(digits[:20]))
    assert loaded.get_params(deep=False)["chunk_size"] == 250
    with pytest.raises(ModelFileError, match="HierarchicalSMT.load"):
        SMT.load(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="damaged or truncated"):
        HierarchicalSMT.load(path)


def test_bad_input_gets_clear_errors(digits, fitted):
    with pytest.raises(NotFittedError):
        HierarchicalSMT().transform(digits)
    big = SMT(patch_size=4, center_patches=False, n_atoms=32, pool_size=3)
    with pytest.raises(ValueError, match="5x5 maps.*at least 6x6"):
        HierarchicalSMT(_first(), big).fit(digits)
    with pytest.raises(ValueError, match="output"):
        HierarchicalSMT(output="third").fit(digits)
    with pytest.raises(ValueError, match="fitted on"):
        fitted.transform(np.zeros((3, 9, 9)))


def test_uncentred_patches_keep_their_level():
    x = torch.full((1, 1, 5, 5), 0.25)
    x[0, 0, 2, 2] = 0.75
    centred, empty_c = extract_patches(x, 3)
    kept, empty_k = extract_patches(x, 3, center=False)
    assert empty_c.sum() == 0 and empty_k.sum() == 0
    torch.testing.assert_close(kept[0, 0, 0], x[0, 0, :3, :3].reshape(-1))
    torch.testing.assert_close(centred[0, 0, 0], kept[0, 0, 0] - kept[0, 0, 0].mean())
    flat = torch.full((1, 1, 5, 5), 0.5)
    assert extract_patches(flat, 3)[1].all() and not extract_patches(flat, 3, center=False)[1].any()


@pytest.mark.parametrize("param, value", [("first", "SMT"), ("second", 3), ("second_weight", -1.0),
                                          ("chunk_size", 0), ("chunk_size", 2.5), ("random_state", -1)])
def test_bad_parameters_are_named(digits, param, value):
    with pytest.raises(ValueError, match=f"HierarchicalSMT: {param} must be"):
        HierarchicalSMT(**{param: value}).fit(digits[:10])
