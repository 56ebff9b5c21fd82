"""One way to validate parameters (issue 17 item 2) and no parameter value that hangs or is
silently ignored (issue 18 item 2): every parameter of SMT, SMTWordEmbedding, StreamingKNN and the
loaders, with a wrong type and a wrong value, gets an error that names it and only it."""
import copy
import re
import time

import numpy as np
import pytest
import torch

from smt import SMT, SMTWordEmbedding
from smt.datasets import load_cifar10, load_cifar100, load_mnist, load_wikitext, load_wordsim353
from smt.knn import StreamingKNN, knn_accuracy

from conftest import small_smt

# parameter: (a value of a wrong type, a value of the right type out of range); None: no such value
SMT_BAD = {
    "patch_size": ("6", 0), "center_patches": ("no", None), "n_atoms": (32.0, 0), "coding": (1, "sparse"), "threshold": ("0.3", 1.5),
    "n_nonzero": (1.5, 0), "max_active": ("3", 0), "empty_code": (0, "none"), "code_norm": (2, "l3"),
    "code_values": (1, "weights"), "image_context_weight": ("0.1", -0.5), "precision": (32, "float16"), "n_components": (6.0, 0), "n_skip": (None, -1), "context": (1.5, 0),
    "order": ("1", 3), "whiten_eps": (None, 0.0), "dict_epochs": (1.0, -1), "dict_batch_size": ("512", 0),
    "dict_lr": ("0.1", -0.1), "dict_max_patches": (1e3, 0), "max_coherence": ("0.35", 1.0),
    "front_end_images": (1e4, 0), "pool_size": (2.5, 0), "pool_stride": (None, 0), "pool_sigma": ("3", 0.0),
    "grayscale_augmentation": (True, "both"), "gray_weight": ("0.5", 0.0), "normalize_output": ("yes", None), "batch_size": (128.0, 0),
    "device": (7, "gpu"), "random_state": ("0", -1), "verbose": ("yes", -1), "checkpoint_path": (5, None),
    "checkpoint_every": (1.5, 0), "keep_statistics": ("no", None),
}
WORDS_BAD = {
    "n_components": ("2", 0), "max_vocab": (1.5, 0), "min_count": (None, 0), "window": (2.5, 0),
    "weighting": (1, "gauss"), "n_skip": ("1", -1), "tokenizer": (5, "spaces"), "specials": (5, [1]),
    "solver": (None, "lapack"), "random_state": ("x", -1), "verbose": ("x", -2),
}
KNN_BAD = {"k": (2.5, 0), "temperature": ("0.1", 0.0), "device": (5, "gpu"), "query_batch_size": (1.5, 0),
           "precision": (5, "fp8")}
LINES = ["the cat sat on the mat", "the dog sat on the log"] * 10


def _cases(table):
    return [pytest.param(name, value, id=f"{name}-{kind}")
            for name, pair in table.items() for kind, value in zip(("type", "value"), pair) if value is not None]


def _names_only(msg, name, all_names):
    """The error names ``name`` and does not print the other parameters."""
    assert re.search(rf"\b{name}\b", msg), msg
    others = [p for p in all_names if p != name and f"{p}=" in msg]
    assert not others, msg


def test_every_smt_parameter_is_in_the_table():
    assert set(SMT_BAD) == set(SMT().get_params()) == set(SMT._parameter_constraints)
    assert set(WORDS_BAD) == set(SMTWordEmbedding().get_params()) == set(SMTWordEmbedding._parameter_constraints)


@pytest.mark.parametrize("name, value", _cases(SMT_BAD))
def test_smt_parameter(digits, name, value):
    model = small_smt(**{name: value})
    tic = time.perf_counter()
    with pytest.raises(ValueError) as e:
        model.fit(digits[0][:40])
    assert time.perf_counter() - tic < 2
    _names_only(str(e.value), name, SMT().get_params())


@pytest.mark.parametrize("name, value", _cases(WORDS_BAD))
def test_word_embedding_parameter(name, value):
    with pytest.raises(ValueError) as e:
        SMTWordEmbedding(n_components=2, tokenizer="whitespace").set_params(**{name: value}).fit(LINES)
    _names_only(str(e.value), name, SMTWordEmbedding().get_params())


@pytest.mark.parametrize("name, value", _cases(KNN_BAD))
def test_knn_parameter(name, value):
    with pytest.raises(ValueError) as e:
        StreamingKNN(np.eye(3), **{name: value})
    _names_only(str(e.value), name, KNN_BAD)


@pytest.mark.parametrize("kw, name", [(dict(k=0), "k"), (dict(temperature=-1.0), "temperature"),
                                      (dict(temperature=float("inf")), "temperature"),
                                      (dict(temperature=float("nan")), "temperature"),
                                      (dict(batch_size=0), "batch_size"), (dict(batch_size="8"), "batch_size"),
                                      (dict(topk=(0,)), "topk"), (dict(k=True), "k")])
def test_knn_accuracy_parameter(kw, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        knn_accuracy(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], device="cpu", **kw)


def test_knn_vote_parameters():
    knn = StreamingKNN(np.eye(3), k=2, device="cpu")
    knn.update(np.eye(3), [0, 1, 2])
    for kw, name in [(dict(k=0), "k"), (dict(k=3), "k=3"), (dict(temperature=0), "temperature")]:
        with pytest.raises(ValueError, match=name):
            knn.predict_scores(**kw)
        with pytest.raises(ValueError, match=name):
            knn.accuracy([0, 1, 2], **kw)


@pytest.mark.parametrize("call, name", [
    (lambda: load_mnist(root=5), "root"), (lambda: load_mnist(download="yes"), "download"),
    (lambda: load_mnist(split=5), "split"), (lambda: load_mnist(split="validation"), "split"),
    (lambda: load_cifar10(root=["a"]), "root"), (lambda: load_cifar10(return_names="no"), "return_names"),
    (lambda: load_cifar10(download=1), "download"), (lambda: load_cifar10(split="val"), "split"),
    (lambda: load_cifar100(label_type=3), "label_type"), (lambda: load_cifar100(label_type="medium"), "label_type"),
    (lambda: load_cifar100(download=None), "download"), (lambda: load_wikitext(root=3.5), "root"),
    (lambda: load_wikitext(name=5), "name"), (lambda: load_wikitext(split="dev"), "split"),
    (lambda: load_wordsim353(root=b"/tmp"), "root"),
])
def test_loader_parameter(call, name):
    with pytest.raises(ValueError) as e:
        call()
    assert name in str(e.value) or "WikiText" in str(e.value) or "MNIST" in str(e.value), str(e.value)


def test_bools_are_not_numbers(digits):
    for name in ("n_atoms", "patch_size", "threshold", "whiten_eps", "order"):
        with pytest.raises(ValueError, match=name):
            small_smt(**{name: True}).fit(digits[0][:40])


def test_numpy_scalars_are_accepted(digits):
    model = small_smt(n_atoms=np.int64(32), threshold=np.float32(0.3), n_components=np.int32(6),
                      whiten_eps=np.float64(0.1), normalize_output=np.bool_(False)).fit(digits[0][:100])
    assert model.transform(digits[0][:2]).shape == (2, model.n_features_out_)


def test_parameters_after_the_first_are_keyword_only():
    with pytest.raises(TypeError):
        SMT(6, 32)
    with pytest.raises(TypeError):
        SMTWordEmbedding(2, 100)
    with pytest.raises(TypeError):
        StreamingKNN(np.eye(3), 2)
    assert SMT(5).patch_size == 5 and SMTWordEmbedding(7).n_components == 7


@pytest.mark.parametrize("params, words", [
    (dict(coding="top_k", n_nonzero=40), ["n_nonzero=40", "n_atoms=32"]),
    (dict(n_components=30, n_skip=3), ["n_components + n_skip = 33", "n_atoms=32"]),
])
def test_relations_between_parameters(digits, params, words):
    with pytest.raises(ValueError) as e:
        small_smt(**params).fit(digits[0][:40])
    for w in words:
        assert w in str(e.value)


def test_context_radius_beyond_the_grid_is_clamped(digits):
    # 8x8 images, 3x3 patches: a 6x6 patch grid, so radius 5 already reaches every patch.
    X = digits[0][:80]
    tic = time.perf_counter()
    huge = small_smt(context=10 ** 6).fit(X)
    assert time.perf_counter() - tic < 10
    reach = small_smt(context=5).fit(X)
    np.testing.assert_array_equal(huge.components_, reach.components_)
    np.testing.assert_array_equal(huge.transform(X[:5]), reach.transform(X[:5]))
    assert huge.context == 10 ** 6  # the parameter itself is left as given


@pytest.mark.parametrize("name, value", [("whiten_eps", 1e300), ("dict_lr", 1e300), ("dict_lr", 2 ** 70),
                                         ("image_context_weight", 1e308), ("threshold", -1.01)])
def test_values_that_would_overflow_or_degenerate(digits, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be"):
        small_smt(**{name: value}).fit(digits[0][:40])


def test_word_window_beyond_the_longest_line_is_clamped():
    tic = time.perf_counter()
    huge = SMTWordEmbedding(n_components=2, tokenizer="whitespace", window=2 ** 70).fit(LINES)
    assert time.perf_counter() - tic < 5
    reach = SMTWordEmbedding(n_components=2, tokenizer="whitespace", window=5).fit(LINES)
    np.testing.assert_array_equal(huge.embedding_, reach.embedding_)


@pytest.fixture(scope="module")
def fitted(small_fitted):
    return small_fitted


@pytest.mark.parametrize("name, value", [("patch_size", 4), ("n_atoms", 48), ("n_components", 4),
                                         ("n_skip", 2), ("pool_size", 2), ("pool_stride", 2)])
def test_shape_parameter_set_after_fit_is_refused(digits, fitted, tmp_path, name, value):
    X = digits[0][:120]
    model = copy.deepcopy(fitted)
    width = model.n_features_out_
    before = getattr(model, name)
    model.set_params(**{name: value})
    for use in (lambda: model.transform(X[:3]), lambda: model.partial_fit(X[:20]),
                lambda: model.save(tmp_path / "m.npz")):
        with pytest.raises(ValueError, match=rf"{name}={value}.*fitted with {before}.*fit again"):
            use()
    model.set_params(**{name: before})  # set back: usable again
    assert model.transform(X[:3]).shape == (3, width)
    if name == "patch_size":
        model.set_params(**{name: value}).fit(X)  # refit: the new shape everywhere
        assert model.transform(X[:3]).shape == (3, model.n_features_out_)


def test_other_parameters_may_change_after_fit(digits, fitted):
    X = digits[0][:120]
    model = copy.deepcopy(fitted)
    width = model.n_features_out_
    model.set_params(batch_size=7, device="cpu", verbose=False, normalize_output=True)
    z = model.transform(X[:10])
    assert z.shape == (10, width)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)


def test_tensor_device_parameter(digits):
    model = small_smt(device=torch.device("cpu")).fit(digits[0][:100])
    assert model.transform(digits[0][:2]).shape[0] == 2


def test_values_that_would_run_for_years_or_exhaust_memory_are_refused():
    from sklearn.datasets import load_digits

    from smt import SMT
    x = load_digits().images[:20] / 16.0
    with pytest.raises(ValueError, match="dict_epochs"):
        SMT(patch_size=3, n_atoms=16, n_components=4, pool_size=3, dict_epochs=2**70).fit(x)
    with pytest.raises(ValueError, match="n_atoms=10000000 needs .* GiB"):
        SMT(patch_size=3, n_atoms=10_000_000, n_components=4, pool_size=3).fit(x)


def test_a_k_whose_solve_would_not_fit_is_refused_before_the_statistics_pass(monkeypatch):
    """K 16384's solve peaked at 20 GiB here (torch's Cholesky + eigh beside G and M) while the
    check budgeted 8 GiB: on a 12 GiB machine it used to pass the check and die in the solve."""
    from sklearn.datasets import load_digits

    import smt.image
    from smt import SMT
    page = 4096
    sysconf = {"SC_PAGE_SIZE": page, "SC_PHYS_PAGES": 12 * 2**30 // page}
    monkeypatch.setattr(smt.image.os, "sysconf", sysconf.__getitem__)
    x = load_digits().images[:20] / 16.0
    with pytest.raises(ValueError, match=r"n_atoms=16384 needs 16\.0 GiB .*8 16384 x 16384"):
        SMT(patch_size=3, n_atoms=16384, n_components=4, pool_size=3).fit(x)
    # K 8192 goes through scipy's subset solver (5 (K, K) arrays, 2.5 GiB): past the memory check,
    # these 20 images are the next thing to be refused
    with pytest.raises(ValueError, match="needs at least n_atoms=8192 non-constant patches"):
        SMT(patch_size=3, n_atoms=8192, n_components=4, pool_size=3).fit(x)


def test_keep_statistics_false_drops_them_after_the_solve_and_says_so(digits, tmp_path):
    """The same model without its two K x K sums; what needs them refuses, naming the parameter."""
    x = digits[0][:150]
    ckpt = str(tmp_path / "fit.npz")
    kept = small_smt(random_state=0, checkpoint_path=ckpt).fit(x)
    # a runtime parameter: the finished checkpoint of a run that kept them serves one that does not
    dropped = small_smt(random_state=0, checkpoint_path=ckpt, keep_statistics=False).fit(x)
    # resumed from the finished checkpoint: no image was coded again (only a coding pass counts uncoded patches)
    assert "uncoded_fraction" in kept.fit_stats_ and "uncoded_fraction" not in dropped.fit_stats_
    np.testing.assert_array_equal(kept.components_, dropped.components_)
    np.testing.assert_array_equal(kept.transform(x[:5]), dropped.transform(x[:5]))
    assert kept._stats is not None and dropped._stats is None
    with pytest.raises(ValueError, match=r"dropped its statistics after the solve \(keep_statistics=False\)"):
        dropped.partial_fit(x[:10])
    with pytest.raises(ValueError, match=r"keep_statistics=False"):
        dropped.save(tmp_path / "m.npz", stream=True)
    dropped.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="was loaded from a file without statistics"):
        SMT.load(tmp_path / "m.npz").partial_fit(x[:10])
    kept.partial_fit(x[:10])  # the default keeps them: fit, then more images
