"""scikit-learn's estimator checks, and their image-input versions.

sklearn's generic checks feed 2-D tabular data. SMT takes images, so each check that builds
such data is listed below with its reason; what those checks verify is re-checked on images
in the tests after it.
"""
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import small_smt

_TABULAR = "builds 2-D tabular X (n_samples, n_features); SMT takes images (n, H, W[, C]) and says so"
EXPECTED_FAILED = {name: _TABULAR for name in [
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_estimators_empty_data_messages", "check_pipeline_consistency", "check_estimators_nan_inf",
    "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general", "check_transformer_preserve_dtypes",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d",
]}


@parametrize_with_checks([small_smt()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---- the same properties, on images ----
@pytest.fixture(scope="module")
def images(digits):
    return digits[0][:240]


def test_fit_returns_self_and_leaves_params(images):
    model = small_smt()
    params = model.get_params()
    assert model.fit(images) is model
    assert model.get_params() == params


def test_fit_idempotent(images):
    model = small_smt()
    z1 = model.fit(images).transform(images[:20])
    z2 = model.fit(images).transform(images[:20])
    np.testing.assert_array_equal(z1, z2)


def test_transform_is_per_image(images):
    """Subset and order invariance: an image's embedding does not depend on its batch."""
    model = small_smt(batch_size=32).fit(images)
    z = model.transform(images)
    np.testing.assert_allclose(model.transform(images[5:17]), z[5:17], atol=1e-6)
    perm = np.random.default_rng(0).permutation(len(images))
    np.testing.assert_allclose(model.transform(images[perm]), z[perm], atol=1e-6)


def test_transform_does_not_change_state(images):
    model = small_smt().fit(images)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(model).items()
              if k.endswith("_")}
    model.transform(images[:10])
    for k, v in before.items():
        assert np.array_equal(getattr(model, k), v) if isinstance(v, np.ndarray) else getattr(model, k) == v


def test_pickle_and_clone(images):
    model = small_smt().fit(images)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.transform(images[:10]), model.transform(images[:10]))
    fresh = clone(model)
    assert not hasattr(fresh, "components_") and fresh.get_params() == model.get_params()


def test_readonly_memmap_and_fortran_order(images, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, images)
    ro = np.load(path, mmap_mode="r")
    z = small_smt().fit_transform(ro)
    np.testing.assert_allclose(small_smt().fit_transform(np.asfortranarray(images)), z, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, bool])
def test_dtypes(images, dtype):
    z = small_smt().fit_transform((images > 0.5).astype(dtype) if dtype is bool else images.astype(dtype))
    assert z.dtype == np.float32 and np.isfinite(z).all()


def test_feature_union_of_two_patch_sizes(images):
    """Two patch sizes, their embeddings concatenated (docs/algorithm.md §7.5): scikit-learn's
    FeatureUnion composes SMT estimators; each block is the member fitted alone, unit-norm."""
    from sklearn.pipeline import FeatureUnion
    members = [small_smt(patch_size=3, normalize_output=True),
               small_smt(patch_size=4, threshold=0.3, normalize_output=True, random_state=1)]
    union = FeatureUnion([("p3", members[0]), ("p4", members[1])])
    z = union.fit_transform(images)
    alone = [clone(m).fit(images).transform(images) for m in members]
    assert z.shape == (len(images), sum(a.shape[1] for a in alone))
    np.testing.assert_array_equal(z, np.hstack(alone))
    for block in np.split(z, [alone[0].shape[1]], axis=1):
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(clone(union).fit_transform(images), z)  # deterministic
