"""The SMT estimator as a user sees it: shapes, determinism, accuracy, sklearn integration, state."""
import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from smt import SMT

from conftest import small_smt


@pytest.fixture(scope="module")
def fitted(digits):
    X, _ = digits
    return small_smt().fit(X[:600])


def test_shapes_and_attributes(fitted, digits):
    X, _ = digits
    z = fitted.transform(X[:10])
    # 8x8 -> 6x6 patch grid -> 4x4 pooled grid, 6 dimensions each
    assert z.shape == (10, 6 * 4 * 4) == (10, fitted.n_features_out_)
    assert z.dtype == np.float32
    assert fitted.whitening_.shape == (9, 9) and fitted.dictionary_.shape == (32, 9)
    assert fitted.components_.shape == (6, 32) and fitted.eigenvalues_.shape == (6,)
    assert fitted.skipped_components_.shape == (1, 32)
    assert fitted.image_shape_ == (8, 8, 1) and fitted.n_features_in_ == 64
    assert fitted.patch_grid_shape_ == (6, 6)
    np.testing.assert_allclose(np.linalg.norm(fitted.dictionary_, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(fitted.atom_usage_.sum(), 1.0)  # one-sparse: each patch one atom
    # each pooled location is a unit d-vector
    loc = z.reshape(10, 6, 16)
    np.testing.assert_allclose(np.linalg.norm(loc, axis=1), 1, rtol=1e-4)


def test_same_seed_same_embedding_bitwise(digits):
    X, _ = digits
    z1 = small_smt(random_state=7).fit_transform(X[:300])
    z2 = small_smt(random_state=7).fit_transform(X[:300])
    z3 = small_smt(random_state=8).fit_transform(X[:300])
    assert np.array_equal(z1, z2)
    assert not np.array_equal(z1, z3)


def test_uint8_and_float_and_channels_agree(digits):
    X, _ = digits
    x8 = np.round(X[:200] * 255).astype(np.uint8)
    za = small_smt().fit_transform(x8)
    zb = small_smt().fit_transform(x8.astype(np.float64) / 255)
    zc = small_smt().fit_transform(x8[..., None])
    np.testing.assert_allclose(za, zb, atol=1e-5)
    np.testing.assert_array_equal(za, zc)


def test_torch_in_torch_out(fitted, digits):
    X, _ = digits
    t = torch.as_tensor(X[:5], dtype=torch.float32)
    z = fitted.transform(t)
    assert isinstance(z, torch.Tensor) and z.shape == (5, fitted.n_features_out_)
    np.testing.assert_allclose(z.numpy(), fitted.transform(X[:5].astype(np.float32)), atol=1e-6)


def test_pipeline_and_grid_search(digits):
    X, y = digits
    pipe = make_pipeline(small_smt(), KNeighborsClassifier(5))
    pipe.fit(X[:500], y[:500])
    # integration, not accuracy: with 32 atoms from 500 images this score varies with the seed
    # (0.73-0.86 over seeds 0-5; mean 0.82)
    assert pipe.score(X[500:700], y[500:700]) > 0.7
    search = GridSearchCV(pipe, {"smt__n_components": [4, 6]}, cv=2)
    search.fit(X[:400], y[:400])
    assert search.best_params_["smt__n_components"] in (4, 6)


def test_whole_image_and_second_order_and_threshold_run(digits):
    X, _ = digits
    for kw in [dict(context="image"), dict(order=2), dict(coding="threshold", threshold=0.3),
               dict(coding="top_k", n_nonzero=3, code_norm="l1"), dict(dict_epochs=0)]:
        z = small_smt(**kw).fit_transform(X[:200])
        assert z.shape == (200, 96) and np.isfinite(z).all(), kw


@pytest.mark.parametrize("sizes, front", [((100, 200, 37, 263), 250), ((150, 150), 1000)])
def test_partial_fit_over_chunks_equals_fit_on_the_whole(digits, sizes, front):
    X, _ = digits
    chunked = small_smt(front_end_images=front, batch_size=64)
    seen = 0
    for size in sizes:
        chunked.partial_fit(X[seen:seen + size])
        seen += size
        # after every call: the model fit gives on everything so far (other batch size, too)
        whole = small_smt(front_end_images=front).fit(X[:seen])
        np.testing.assert_allclose(chunked.whitening_, whole.whitening_, rtol=1e-10)
        np.testing.assert_array_equal(chunked.dictionary_, whole.dictionary_)
        np.testing.assert_allclose(chunked.components_, whole.components_, atol=1e-10)
        np.testing.assert_allclose(chunked.transform(X[600:650]), whole.transform(X[600:650]), atol=1e-6)
        assert chunked._stats.n_images_ == seen
        # memory stays bounded: at most front_end_images images are kept, none once it is full
        kept = chunked._stream["front"]
        assert (kept is None) == (seen >= front) and (kept is None or len(kept) == seen)


def test_partial_fit_equals_fit_with_gray_copies_and_uint8(digits):
    X = np.round(_tinted(digits[0][:300]) * 255).astype(np.uint8)
    params = dict(grayscale_augmentation="paired", n_atoms=64, front_end_images=150)
    chunked = small_smt(**params)
    for a, b in ((0, 100), (100, 220), (220, 300)):
        chunked.partial_fit(X[a:b])
    whole = small_smt(**params).fit(X)
    np.testing.assert_array_equal(chunked.dictionary_, whole.dictionary_)
    np.testing.assert_allclose(chunked.components_, whole.components_, atol=1e-10)


def test_partial_fit_after_fit_adds_statistics_only(digits):
    X, _ = digits
    model = small_smt().fit(X[:300])
    dictionary = model.dictionary_.copy()
    model.partial_fit(X[300:600])
    assert np.array_equal(model.dictionary_, dictionary) and model._stats.n_images_ == 600
    # the same statistics added by hand give the same projection
    ref = small_smt().fit(X[:300])
    ref._stats.partial_fit(*_codes(ref, X[300:600]))
    ref._solve(ref._stats, torch.device("cpu"))
    np.testing.assert_allclose(model.components_, ref.components_, atol=1e-10)


def test_fit_does_not_depend_on_batch_size(digits):
    X, _ = digits
    a = small_smt(batch_size=37).fit(X[:500])
    b = small_smt(batch_size=500).fit(X[:500])
    np.testing.assert_allclose(a.whitening_, b.whitening_, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(a.dictionary_, b.dictionary_)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-10)


def test_max_coherence_bounds_the_sampled_atoms_and_keeps_fit_invariances(digits):
    X, _ = digits
    params = dict(n_atoms=48, dict_epochs=0, max_coherence=0.8, coding="threshold", threshold=0.5,
                  front_end_images=250)
    model = small_smt(**params).fit(X[:500])
    cos = model.dictionary_ @ model.dictionary_.T - 2 * np.eye(48)
    assert cos.max() <= 0.8 and model.fit_stats_["dictionary_candidates"] >= 48
    # uniform draws at this size hold near-duplicates: the bound is what changed the atoms
    uniform = small_smt(**dict(params, max_coherence=None)).fit(X[:500])
    assert (uniform.dictionary_ @ uniform.dictionary_.T - 2 * np.eye(48)).max() > 0.8
    # neither batch size nor chunking changes the model
    other = small_smt(**params, batch_size=33).fit(X[:500])
    np.testing.assert_array_equal(other.dictionary_, model.dictionary_)
    chunked = small_smt(**params)
    for a, b in ((0, 120), (120, 500)):
        chunked.partial_fit(X[a:b])
    np.testing.assert_array_equal(chunked.dictionary_, model.dictionary_)
    np.testing.assert_allclose(chunked.components_, model.components_, atol=1e-10)


def test_front_end_is_fitted_on_the_first_images(digits):
    X, _ = digits
    bounded = small_smt(front_end_images=300).fit(X[:600])
    # the front end of the first 300 images, the statistics of all 600
    first = small_smt().fit(X[:300])
    np.testing.assert_array_equal(bounded.whitening_, first.whitening_)
    np.testing.assert_array_equal(bounded.dictionary_, first.dictionary_)
    assert bounded._stats.n_images_ == 600
    with pytest.raises(ValueError, match="front_end_images"):
        small_smt(front_end_images=0).fit(X[:100])
    with pytest.raises(ValueError, match="front_end_images=2"):
        small_smt(front_end_images=2, n_atoms=200).fit(X[:100])


def _codes(model, X):
    from smt._validation import as_images, to_batch
    from smt.patches import extract_patches
    patches, empty = extract_patches(to_batch(as_images(X), "cpu"), model.patch_size)
    idx, val = model._code(patches, empty, torch.as_tensor(model.dictionary_), "cpu")
    return idx, val, ~empty


def test_save_load_round_trip(fitted, digits, tmp_path):
    X, _ = digits
    path = tmp_path / "model.npz"
    fitted.save(path)
    loaded = SMT.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert np.array_equal(loaded.transform(X[:50]), fitted.transform(X[:50]))
    with pytest.raises(ValueError, match="loaded from a file"):
        loaded.partial_fit(X[:50])
    # the file is plain arrays: it loads with pickle disabled
    with np.load(path, allow_pickle=False) as f:
        assert "components_" in f.files


def test_gaussian_pool_window_is_read_at_transform_and_saved(fitted, digits, tmp_path):
    # pool_sigma weighs each window's patches (centre first) without a refit: the width and the
    # unit pooled locations stay, a very wide Gaussian is the paper's box, the same seed gives the
    # same embedding, and a saved model keeps its window.
    X, _ = digits
    model = copy.deepcopy(fitted)
    box = model.transform(X[:20])
    z = model.set_params(pool_sigma=1.0).transform(X[:20])
    assert z.shape == box.shape and not np.allclose(z, box, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(z.reshape(20, 6, 16), axis=1), 1, rtol=1e-4)
    np.testing.assert_allclose(model.set_params(pool_sigma=1e6).transform(X[:20]), box, atol=1e-6)
    fresh = small_smt(pool_sigma=1.0).fit(X[:600])
    assert np.array_equal(fresh.transform(X[:20]), z)
    fresh.save(tmp_path / "g.npz")
    loaded = SMT.load(tmp_path / "g.npz")
    assert loaded.pool_sigma == 1.0 and np.array_equal(loaded.transform(X[:20]), z)


@pytest.mark.parametrize("front", [150, 1000])  # front end frozen after the first chunk / still open
def test_partial_fit_goes_on_from_a_model_saved_with_its_stream(digits, tmp_path, front):
    X, _ = digits
    X = np.round(X[:400] * 255).astype(np.uint8)
    chunked = small_smt(front_end_images=front)
    chunked.partial_fit(X[:200])
    path = tmp_path / "stream.npz"
    chunked.save(path, stream=True)
    # a new process: the model comes back from the file alone
    loaded = SMT.load(path)
    assert loaded._stats.n_images_ == 200
    loaded.partial_fit(X[200:400])
    chunked.partial_fit(X[200:400])
    whole = small_smt(front_end_images=front).fit(X)
    for model in (loaded, chunked):
        np.testing.assert_array_equal(model.dictionary_, whole.dictionary_)
        np.testing.assert_allclose(model.components_, whole.components_, atol=1e-10)
    # without stream=True the file has no statistics, and says so when asked to go on
    chunked.save(path)
    with pytest.raises(ValueError, match="stream=True"):
        SMT.load(path).partial_fit(X[:50])
    with pytest.raises(ValueError, match="stream=True"):
        SMT.load(path).save(tmp_path / "again.npz", stream=True)


def test_checkpoint_resume_gives_same_model(digits, tmp_path, monkeypatch):
    X, _ = digits
    ref = small_smt().fit(X[:600])
    path = tmp_path / "fit.ckpt.npz"
    model = small_smt(checkpoint_path=str(path), checkpoint_every=1, batch_size=100)
    calls = {"n": 0}
    original = type(model)._accumulate

    def crash_midway(self, *args):
        # stop after a few statistics batches, as a killed process would
        from smt.statistics import ContextStatistics
        real = ContextStatistics.partial_fit

        def counting(stats, *a, **kw):
            calls["n"] += 1
            if calls["n"] > 3:
                raise KeyboardInterrupt
            return real(stats, *a, **kw)
        monkeypatch.setattr(ContextStatistics, "partial_fit", counting)
        try:
            return original(self, *args)
        finally:
            monkeypatch.setattr(ContextStatistics, "partial_fit", real)

    monkeypatch.setattr(type(model), "_accumulate", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X[:600])
    monkeypatch.undo()
    assert path.exists()
    resumed = small_smt(checkpoint_path=str(path), checkpoint_every=1, batch_size=100).fit(X[:600])
    # batch_size differs from ref only in how images are grouped: statistics are sums, so the
    # model equals an uninterrupted fit with the same batch size
    uninterrupted = small_smt(batch_size=100).fit(X[:600])
    np.testing.assert_array_equal(resumed.dictionary_, uninterrupted.dictionary_)
    np.testing.assert_allclose(resumed.components_, uninterrupted.components_, atol=1e-12)
    assert ref.components_.shape == resumed.components_.shape


def test_checkpoint_from_other_data_is_refused(digits, tmp_path):
    X, _ = digits
    path = tmp_path / "fit.npz"
    small_smt(checkpoint_path=str(path)).fit(X[:300])
    with pytest.raises(ValueError, match="other parameters or other images"):
        small_smt(checkpoint_path=str(path)).fit(X[300:600])


def test_verbose_shows_progress(digits, capsys):
    X, _ = digits
    small_smt(verbose=True).fit(X[:200])
    err = capsys.readouterr().err
    assert "SMT whitening" in err and "SMT statistics" in err


def _tinted(X, seed=0):
    """Digits painted in a random colour on a random darker background: colour is a nuisance."""
    rng = np.random.default_rng(seed)
    colour, background = rng.random((len(X), 1, 1, 3)), 0.5 * rng.random((len(X), 1, 1, 3))
    return (X[..., None] * colour + (1 - X[..., None]) * background).astype(np.float32)


def _mean_cosine(a, b):
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


def test_paired_grayscale_augmentation_learns_colour_invariance(digits):
    from smt.augment import to_grayscale
    X = _tinted(digits[0][:600])
    gray = to_grayscale(X)
    similarity = {}
    for aug in (None, "paired"):
        model = small_smt(grayscale_augmentation=aug, n_atoms=64).fit(X[:400])
        z = model.transform(X[400:])
        assert z.shape == (200, model.n_features_out_)
        similarity[aug] = _mean_cosine(z, model.transform(gray[400:]))
    # an image and its gray copy are one context: their embeddings move together
    assert similarity["paired"] > similarity[None] + 0.2, similarity
    with pytest.raises(ValueError, match="RGB"):
        small_smt(grayscale_augmentation="paired").fit(digits[0][:100])


def test_gray_copies_as_context_only(digits):
    """grayscale_augmentation="context": the front end sees the colour images only (the same
    whitening and dictionary as no augmentation), the statistics pair each with its gray copy,
    and a gray weight between 0 and 1 moves the model from one towards the other."""
    X = _tinted(digits[0][:300])
    params = dict(coding="threshold", threshold=0.3, context="image", n_atoms=48)
    plain = small_smt(**params).fit(X)
    ctx = {u: small_smt(grayscale_augmentation="context", gray_weight=u, **params).fit(X) for u in (1.0, 0.3)}
    for model in ctx.values():
        np.testing.assert_array_equal(model.whitening_, plain.whitening_)
        np.testing.assert_array_equal(model.dictionary_, plain.dictionary_)
    g = {name: m._stats.gram_ for name, m in [("plain", plain), ("1", ctx[1.0]), ("0.3", ctx[0.3])]}
    # G = G_colour + u G_gray: linear in u
    torch.testing.assert_close(g["0.3"], g["plain"] + 0.3 * (g["1"] - g["plain"]), rtol=1e-12, atol=1e-9)
    assert not np.array_equal(np.asarray(ctx[1.0].components_), np.asarray(ctx[0.3].components_))
    with pytest.raises(ValueError, match="gray_weight=0.3 needs binary codes"):
        small_smt(grayscale_augmentation="context", gray_weight=0.3, coding="threshold", context=1).fit(X)


def test_gray_view_is_an_smt_of_the_luma_and_blind_to_colour(digits):
    """GrayView fits a clone of its SMT on the luma of RGB images: the same embedding as that SMT
    fitted by hand on the luma, the same for an image and its gray copy, beside a colour SMT in a
    FeatureUnion, and seeded, picklable and loud about bad input like any estimator."""
    import pickle

    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import make_union

    from smt import GrayView
    from smt.augment import to_grayscale, to_luma
    X = (_tinted(digits[0][:300]) * 255).round().astype(np.uint8)
    luma = to_luma(X)
    assert luma.shape == (300, 8, 8) and luma.dtype == np.uint8
    assert luma[0, 0, 0] == round(X[0, 0, 0] @ np.array([0.299, 0.587, 0.114]))
    view = GrayView(small_smt(n_atoms=48))
    z = view.fit_transform(X)
    assert z.shape == (300, view.n_features_out_) and z.dtype == np.float32
    assert not hasattr(view.estimator, "components_")  # the parameter is left as given; the clone is fitted
    by_hand = small_smt(n_atoms=48).fit(luma)
    np.testing.assert_allclose(z, by_hand.transform(luma), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(view.transform(X), GrayView(small_smt(n_atoms=48)).fit(X).transform(X))
    # colour-blind: an image and its gray copy have one luma, so one embedding
    np.testing.assert_array_equal(view.transform(X[:20]), view.transform(to_grayscale(X[:20])))
    np.testing.assert_allclose(view.transform(torch.as_tensor(X[:20])).numpy(), z[:20], rtol=1e-5, atol=1e-6)
    chunks = list(GrayView(small_smt(n_atoms=48)).fit_transform_chunks(X, chunk_size=128))
    assert [len(c) for c in chunks] == [128, 128, 44]
    np.testing.assert_allclose(np.vstack(chunks), z, rtol=1e-5, atol=1e-6)
    # beside a colour model: two unit-norm embeddings side by side
    union = make_union(small_smt(n_atoms=48, normalize_output=True),
                       GrayView(small_smt(n_atoms=48, normalize_output=True))).fit(X[:200])
    u = union.transform(X[200:])
    half = union.transformer_list[0][1].n_features_out_
    np.testing.assert_allclose(np.linalg.norm(u[:, :half], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(u[:, half:], axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(union)).transform(X[200:]), u)
    with pytest.raises(NotFittedError):
        GrayView(small_smt()).transform(X)
    with pytest.raises(ValueError, match=r"RGB images of shape \(n, H, W, 3\), got \(300, 8, 8\)"):
        GrayView(small_smt()).fit(digits[0][:300])
    with pytest.raises(TypeError, match="Cannot clone object .*smt.*not implement a 'get_params'"):  # not an estimator
        GrayView("smt").fit(X)
    with pytest.raises(ValueError, match="patch_size"):  # the SMT's own checks reach the user
        GrayView(small_smt(patch_size=9)).fit(X)


def test_add_mirrors_and_to_grayscale():
    from smt.augment import add_mirrors, to_grayscale
    X = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    X2, y2 = add_mirrors(X, [4, 7])
    assert X2.shape == (4, 2, 3, 3) and y2.tolist() == [4, 7, 4, 7]
    np.testing.assert_array_equal(X2[2, :, 0], X[0, :, 2])
    g = to_grayscale(np.array([[[[255, 0, 0], [10, 20, 30]]]], dtype=np.uint8))
    assert g.dtype == np.uint8 and g[0, 0, 0].tolist() == [76, 76, 76]  # 0.299 * 255 = 76.2
    assert g[0, 0, 1].tolist() == [round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)] * 3


def test_add_gray_copies_appends_labelled_gray_images():
    import torch
    from smt.augment import add_gray_copies, to_grayscale
    X = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    X2, y2 = add_gray_copies(X, [1, 2, 3])
    assert X2.shape == (6, 4, 5, 3) and X2.dtype == np.uint8 and y2.tolist() == [1, 2, 3, 1, 2, 3]
    np.testing.assert_array_equal(X2[:3], X)
    np.testing.assert_array_equal(X2[3:], to_grayscale(X))
    assert (X2[3:, ..., 0] == X2[3:, ..., 2]).all() and not (X[..., 0] == X[..., 2]).all()
    T = add_gray_copies(torch.as_tensor(X))
    assert isinstance(T, torch.Tensor) and T.shape == (6, 4, 5, 3)
    np.testing.assert_array_equal(T.numpy(), X2)
    with pytest.raises(ValueError, match="RGB"):
        add_gray_copies(X[..., 0])
    with pytest.raises(ValueError, match="labels"):
        add_gray_copies(X, [1, 2])


def test_killed_fit_resumes_to_the_same_model(digits, tmp_path):
    """A fit killed with SIGKILL mid-way resumes from its checkpoint to the uninterrupted model."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    X = digits[0][:600]
    np.save(tmp_path / "x.npy", X)
    ckpt = tmp_path / "fit.npz"
    params = dict(checkpoint_path=str(ckpt), checkpoint_every=1, batch_size=50)
    child = f"""
import sys, time, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import small_smt
from smt.statistics import ContextStatistics
real = ContextStatistics.partial_fit
def slow(self, *a, **kw):  # a slow statistics pass, so the kill lands in its middle
    time.sleep(0.5)
    return real(self, *a, **kw)
ContextStatistics.partial_fit = slow
small_smt(**{params!r}).fit(np.load({str(tmp_path / "x.npy")!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", child])
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.exists():
                with np.load(ckpt, allow_pickle=False) as f:
                    run = json.loads(str(f["__meta__"]))["run"]
                if run["phase"] == "statistics" and run["batch"] >= 150:
                    break
            assert proc.poll() is None, "the fit ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = small_smt(**params).fit(X)
    uninterrupted = small_smt(batch_size=50).fit(X)
    np.testing.assert_array_equal(resumed.dictionary_, uninterrupted.dictionary_)
    np.testing.assert_allclose(resumed.components_, uninterrupted.components_, atol=1e-12)
    np.testing.assert_array_equal(resumed.transform(X[:20]), uninterrupted.transform(X[:20]))


def test_dense_threshold_codes_warn(digits):
    X, _ = digits
    with pytest.warns(UserWarning, match="codes are dense"):
        small_smt(n_atoms=400, coding="threshold", threshold=0.0, context="image", n_components=4).fit(X[:600])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a few active atoms of a small dictionary are not "dense"
        small_smt(coding="threshold", threshold=0.4, context="image").fit(X[:200])


@pytest.mark.parametrize("native", [True, False])
def test_bf16_where_it_is_emulated_warns(monkeypatch, digits, native):
    """precision="bf16" asks for speed; on a device without bfloat16 matrix units the GEMM is
    emulated (100x slower than float32 on an AVX2 CPU): the user is told, and the result is the same."""
    import smt._device
    from smt.knn import StreamingKNN
    monkeypatch.setattr(smt._device, "native_bf16", lambda device: native)
    X, _ = digits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = small_smt(coding="threshold", threshold=0.3, precision="bf16").fit(X[:200])
        z = model.transform(X[:20])
        StreamingKNN(z, k=3, precision="bf16")
    slow = [str(w.message) for w in caught if "no bfloat16 matrix units" in str(w.message)]
    owners = sorted({m.split("(")[0] for m in slow})
    assert owners == ([] if native else ["SMT", "StreamingKNN"])
    assert all("precision='float32'" in m for m in slow)
    # Each warning names the user's line, however deep inside smt and scikit-learn it was raised.
    assert {w.filename for w in caught if "no bfloat16 matrix units" in str(w.message)} <= {__file__}
    if not native:
        from sklearn.pipeline import make_pipeline
        with pytest.warns(UserWarning, match="no bfloat16 matrix units") as through_pipeline:
            make_pipeline(small_smt(coding="threshold", threshold=0.3, precision="bf16")).fit_transform(X[:200])
        assert {w.filename for w in through_pipeline} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_smt(coding="threshold", threshold=0.3, precision="float32").fit(X[:200])


@pytest.mark.parametrize("code_values", ["similarity", "excess"])
def test_real_valued_codes_fit_transform_and_determinism(code_values):
    from sklearn.datasets import load_digits
    x = load_digits().images[:240] / 16.0
    params = dict(patch_size=3, n_atoms=48, n_components=6, context=1, pool_size=3, pool_stride=1,
                  threshold=0.4, random_state=0)
    binary = SMT(**params).fit_transform(x)
    model = SMT(code_values=code_values, **params)
    z = model.fit_transform(x)
    assert z.shape == binary.shape == (240, model.n_features_out_)
    np.testing.assert_array_equal(z, model.transform(x))                 # codes encoded again, same result
    np.testing.assert_array_equal(z, SMT(code_values=code_values, **params).fit_transform(x))  # same seed
    assert not np.allclose(z, binary)  # the coefficients reach the statistics and the embedding
    with pytest.raises(ValueError, match="code_values"):
        SMT(code_values="excess", coding="one_sparse", **{k: v for k, v in params.items()}).fit(x)


def test_mixed_window_and_whole_image_context():
    from sklearn.datasets import load_digits
    x = load_digits().images[:200] / 16.0
    params = dict(patch_size=3, n_atoms=40, n_components=5, pool_size=3, pool_stride=1, threshold=0.4,
                  random_state=0)
    window = SMT(context=1, **params).fit(x)
    mixed = SMT(context=1, image_context_weight=0.1, **params).fit(x)
    again = SMT(context=1, image_context_weight=0.1, **params).fit(x)
    np.testing.assert_array_equal(mixed.transform(x), again.transform(x))
    assert mixed.transform(x).shape == window.transform(x).shape
    assert not np.allclose(mixed.components_, window.components_)
    # the whole-image context has nothing to mix with
    image = SMT(context="image", **params).fit(x)
    np.testing.assert_array_equal(SMT(context="image", image_context_weight=0.1, **params).fit(x).components_,
                                  image.components_)
    with pytest.raises(ValueError, match="image_context_weight"):
        SMT(context=1, image_context_weight=-1.0, **params).fit(x)


@pytest.mark.parametrize("mode", ["patch", "image"])
def test_centring_mode_fits_deterministically_and_sees_colour(digits, mode):
    """center_patches="patch" / "image" keep what per-channel centring removes: digits on a red
    or a blue ground embed differently, where per-channel centring sees identical patches."""
    X, _ = digits
    ground = np.array([[0.4, 0.0, 0.0], [0.0, 0.0, 0.4]], dtype=np.float32)[np.arange(300) % 2]
    colour = 0.5 * X[:300, ..., None].astype(np.float32) + ground[:, None, None, :]  # (300, 8, 8, 3)
    params = dict(threshold=0.3, coding="threshold")
    model = small_smt(center_patches=mode, **params)
    z = model.fit_transform(colour)
    np.testing.assert_array_equal(z, small_smt(center_patches=mode, **params).fit_transform(colour))
    assert z.shape == (300, 6 * 4 * 4) == (300, model.n_features_out_) and np.isfinite(z).all()
    same_digit_other_colour = np.concatenate([colour[:1, ..., ::-1], colour[:1]])  # blue ground, then red
    per_channel = small_smt(**params).fit(colour).transform(same_digit_other_colour)
    np.testing.assert_allclose(per_channel[0], per_channel[1], atol=1e-6)  # the grounds look the same
    assert not np.allclose(*model.transform(same_digit_other_colour), atol=1e-3)
