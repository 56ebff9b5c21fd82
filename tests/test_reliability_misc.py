"""The smaller leaks of issue 18 item 7: tensors that require grad, mixed lists, kNN labels far
above the class count, values beyond float32, tokenizers that return the wrong thing, the CLI."""
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from smt import SMTWordEmbedding
from smt.cli import main
from smt.knn import StreamingKNN, knn_accuracy

from conftest import small_smt

LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 10


@pytest.fixture(scope="module")
def X(digits):
    return digits[0][:120]  # the images small_fitted is fitted on


@pytest.fixture(scope="module")
def fitted(small_fitted):
    return small_fitted


def test_tensors_that_require_grad(X, fitted):
    t = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    z = fitted.transform(t)
    assert isinstance(z, torch.Tensor) and not z.requires_grad
    np.testing.assert_allclose(z.numpy(), fitted.transform(X.astype(np.float32)), atol=1e-6)
    model = small_smt().fit(t)
    np.testing.assert_array_equal(model.dictionary_, small_smt().fit(X.astype(np.float32)).dictionary_)
    assert not small_smt().fit_transform(t).requires_grad
    assert isinstance(fitted.transform([t[0], t[1]]), np.ndarray)


def test_mixed_numpy_and_torch_lists(X, fitted):
    mixed = [X[0], torch.as_tensor(X[1]), X[2], torch.as_tensor(X[3], dtype=torch.float64).requires_grad_()]
    z = fitted.transform(mixed)
    assert isinstance(z, np.ndarray)
    np.testing.assert_allclose(z, fitted.transform(X[:4]), atol=1e-6)
    with pytest.raises(ValueError, match="mixed pixel scales"):
        fitted.transform([np.zeros((8, 8), np.uint8), torch.zeros(8, 8)])
    with pytest.raises(ValueError, match="mixed sizes.*image 1"):
        fitted.transform([X[0], torch.zeros(9, 8)])


@pytest.mark.parametrize("big", [2_000_000, 2 ** 40, 2 ** 61])
def test_knn_labels_far_above_the_class_count(big):
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(60, 4)), rng.normal(size=(500, 4))
    labels = rng.integers(0, 3, 60) * big
    tic = time.perf_counter()
    res = knn_accuracy(train, labels, test, rng.integers(0, 3, 500) * big, k=5, device="cpu")
    assert time.perf_counter() - tic < 2 and 0 <= res["top1"] <= res["top5"] <= 100
    knn = StreamingKNN(test, k=5, device="cpu")
    knn.update(train, labels)
    small = StreamingKNN(test, k=5, device="cpu")
    small.update(train, labels // big)
    assert torch.equal(knn.predict(), small.predict() * big)
    assert knn.classes_.tolist() == sorted(set(labels.tolist()))


def test_knn_accuracy_is_unchanged_by_relabelling():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(80, 5)), rng.normal(size=(40, 5))
    y_train, y_test = rng.integers(0, 4, 80), rng.integers(0, 6, 40)  # test labels 4, 5 have no reference
    plain = knn_accuracy(train, y_train, test, y_test, k=7, device="cpu", topk=(1, 2, 5))
    assert plain == knn_accuracy(train, y_train, test, y_test, k=7, device="cpu", topk=(1, 2, 5))
    knn = StreamingKNN(test, k=7, device="cpu")
    knn.update(train, y_train)
    ranked = knn.ranked_classes(6)
    for t in (1, 2, 5):
        want = 100.0 * float((ranked[:, :t] == torch.as_tensor(y_test)[:, None]).any(1).sum()) / 40
        assert plain[f"top{t}"] == want


@pytest.mark.parametrize("bad, words", [(1e300, "beyond float32"), (-1e39, "beyond float32"),
                                        (np.inf, "NaN or infinite"), (np.nan, "NaN or infinite")])
def test_knn_values_beyond_float32(bad, words):
    x = np.eye(3)
    x[1, 1] = bad
    with pytest.raises(ValueError, match=words):
        StreamingKNN(x, device="cpu")
    knn = StreamingKNN(np.eye(3), device="cpu")
    with pytest.raises(ValueError, match=f"reference_chunk .*{words}"):
        knn.update(x, [0, 1, 2])


def test_images_torch_cannot_hold(fitted):
    with pytest.raises(ValueError, match="meta device"):
        fitted.transform(torch.empty((2, 8, 8), device="meta"))
    with pytest.raises(ValueError, match="float128|longdouble"):
        fitted.transform(np.zeros((2, 8, 8), dtype=np.longdouble))


def test_knn_meta_tensors():
    with pytest.raises(ValueError, match="meta device"):
        StreamingKNN(torch.empty((2, 4), device="meta"), device="cpu")
    knn = StreamingKNN(np.eye(4), device="cpu")
    with pytest.raises(ValueError, match="meta device"):
        knn.update(torch.empty((2, 4), device="meta"), [0, 1])


def test_knn_labels_beyond_int64():
    knn = StreamingKNN(np.eye(3), device="cpu")
    with pytest.raises(ValueError, match="beyond int64"):
        knn.update(np.eye(3), np.array([0.0, 1.0, 1e30]))


def test_images_beyond_float32(fitted):
    x = np.zeros((2, 8, 8))
    x[0, 0, 0] = 1e300
    with pytest.raises(ValueError, match=r"\[0, 1\].*1e\+300"):
        fitted.transform(x)


@pytest.mark.parametrize("tokenizer, returned", [(lambda line: line, "str"), (lambda line: None, "NoneType"),
                                                 (lambda line: [len(w) for w in line.split()], "list"),
                                                 (lambda line: iter(line.split()), "list_iterator")])
def test_tokenizer_that_returns_the_wrong_thing(tokenizer, returned):
    with pytest.raises(TypeError, match=f"tokenizer returned a {returned} for line 0"):
        SMTWordEmbedding(n_components=2, tokenizer=tokenizer).fit(LINES)


def test_corpus_file_with_invalid_utf8(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"the cat sat\n" * 3 + b"bad \xff bytes\n")
    with open(path, encoding="utf-8") as f, pytest.raises(ValueError, match=f"corpus {path} is not valid UTF-8"):
        SMTWordEmbedding(n_components=2).fit(f)


def test_parameters_set_after_fit_are_checked_at_transform(fitted, X):
    fitted.set_params(batch_size=0)
    try:
        with pytest.raises(ValueError, match="batch_size"):
            fitted.transform(X[:2])
    finally:
        fitted.set_params(batch_size=128)


def test_tokenizer_returning_a_tuple_is_fine():
    model = SMTWordEmbedding(n_components=2, tokenizer=lambda line: tuple(line.split())).fit(LINES)
    assert "cat" in model.vocabulary_


def test_cli_seed_as_its_docstring_shows(monkeypatch):
    import smt.cli
    seen = []
    monkeypatch.setattr(smt.cli, "run_digits", lambda seed=0, out=None: seen.append(seed))
    for argv, seed in [(["--seed", "3"], 3), (["digits", "--seed", "4"], 4), (["--seed", "5", "digits"], 5),
                       ([], 0), (["digits"], 0)]:
        assert main(argv) == 0
        assert seen.pop() == seed


@pytest.mark.parametrize("seed", ["-1", "abc", "4294967296", "1.5", ""])
def test_cli_bad_seed_without_traceback(capsys, seed):
    with pytest.raises(SystemExit) as e:
        main(["--seed", seed])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed" in err and "Traceback" not in err


def test_knn_scores_by_class_index_refuse_a_huge_label():
    from smt.knn import StreamingKNN
    knn = StreamingKNN(np.ones((3000, 2)), k=1, device="cpu")
    knn.update(np.ones((2, 2)), np.array([0, 2_000_000]))
    assert knn.predict().shape == (3000,)  # votes over the labels present
    with pytest.raises(ValueError, match="GiB"):
        knn.predict_scores()


def test_fit_and_knn_leave_the_callers_thread_count_alone():
    # numba's OpenMP layer, started by the first compiled pass of a process, would reset torch's
    # thread count to the core count: run in a fresh process so that the first pass is this one.
    code = (
        "import numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "from sklearn.datasets import load_digits\n"
        "from smt import SMT\n"
        "from smt.knn import knn_accuracy\n"
        "x, y = load_digits(return_X_y=True)\n"
        "x = x.reshape(-1, 8, 8)[:300] / 16\n"
        "z = SMT(patch_size=3, pool_size=2, pool_stride=1, n_atoms=32, n_components=4, random_state=0)"
        ".fit_transform(x)\n"
        "knn_accuracy(z[:200], y[:200], z[200:], y[200:300], precision='bf16')\n"
        "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
