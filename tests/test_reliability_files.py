"""Damaged, foreign and malformed model files: every one gets an error that names the file and the
problem, and a model file decides nothing outside itself (issue 18, items 3, 4, 5 and 6)."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from smt import SMT, SMTWordEmbedding
from smt._io import ModelFileError

from conftest import small_smt

LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20


@pytest.fixture(scope="module")
def images(digits):
    return digits[0][:120]  # the images small_fitted is fitted on


@pytest.fixture(scope="module")
def model(small_fitted):
    return small_fitted


@pytest.fixture(scope="module")
def model_bytes(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model.save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def words():
    return SMTWordEmbedding(n_components=2, tokenizer="whitespace").fit(LINES)


def _rewrite(path, meta=None, drop=(), **arrays):
    """Rewrite an .npz model file with its header changed by ``meta`` and arrays replaced."""
    with np.load(path, allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    header = json.loads(str(content.pop("__meta__")))
    if callable(meta):
        header = meta(header)
    for name in drop:
        content.pop(name)
    content.update(arrays)
    np.savez(path, __meta__=np.array(json.dumps(header)), **content)


def _expect(exc, path, *words):
    msg = str(exc.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def test_truncated_files_are_named(model_bytes, tmp_path):
    path = tmp_path / "cut.npz"
    for n in sorted({0, 1, 3, 4, 10, 30, 100, len(model_bytes) // 2, len(model_bytes) - 22, len(model_bytes) - 1}):
        path.write_bytes(model_bytes[:n])
        with pytest.raises(ModelFileError) as e:
            SMT.load(path)
        _expect(e, path)
        assert ("empty" in str(e.value)) == (n == 0)


def test_bit_flips_are_caught_or_harmless(model, model_bytes, images, tmp_path):
    # Every array is checked against its CRC: a flip either gives a named error or falls in a
    # field zipfile does not use (the model is then the same).
    path = tmp_path / "flip.npz"
    ref = model.transform(images[:3])
    n = len(model_bytes)
    positions = sorted(set(range(0, 40)) | set(range(0, n, 211)) | set(range(n - 40, n)))
    errors = 0
    for i in positions:
        data = bytearray(model_bytes)
        data[i] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            loaded = SMT.load(path)
        except ModelFileError as e:
            assert str(path) in str(e)
            errors += 1
            continue
        np.testing.assert_array_equal(loaded.transform(images[:3]), ref)
    assert errors > len(positions) // 2


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    (b"hello, I am a text file\n", "not an .npz"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }" + b" " * 50 + b"\n" + bytes(8),
     "not an .npz"),
    (b"PK\x03\x04" + bytes(40), "damaged or truncated"),
])
def test_foreign_bytes(tmp_path, content, problem):
    path = tmp_path / "foreign.npz"
    path.write_bytes(content)
    for load in (SMT.load, SMTWordEmbedding.load):
        with pytest.raises(ModelFileError) as e:
            load(path)
        _expect(e, path, problem)


def test_missing_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SMT model file at .*nothing.npz"):
        SMT.load(tmp_path / "nothing.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ModelFileError) as e:
        SMT.load(tmp_path / "dir.npz")
    _expect(e, tmp_path / "dir.npz", "directory")


def test_npz_without_header(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ModelFileError) as e:
        SMT.load(path)
    _expect(e, path, "without the header")


def test_one_kind_of_file_given_for_another(model, words, tmp_path, images):
    smt_path, word_path, ckpt_path = tmp_path / "smt.npz", tmp_path / "words.npz", tmp_path / "ckpt.npz"
    model.save(smt_path)
    words.save(word_path)
    small_smt(checkpoint_path=str(ckpt_path)).fit(images)
    with pytest.raises(ModelFileError) as e:
        SMT.load(word_path)
    _expect(e, word_path, "an SMTWordEmbedding model file, not an SMT model file", "SMTWordEmbedding.load")
    with pytest.raises(ModelFileError) as e:
        SMTWordEmbedding.load(smt_path)
    _expect(e, smt_path, "an SMT model file, not an SMTWordEmbedding model file")
    with pytest.raises(ModelFileError) as e:
        SMT.load(ckpt_path)
    _expect(e, ckpt_path, "an SMT checkpoint file")
    # files written before the header named their kind are told apart by their content
    _rewrite(word_path, meta=lambda h: {k: v for k, v in h.items() if k != "kind"})
    with pytest.raises(ModelFileError, match="SMTWordEmbedding model file"):
        SMT.load(word_path)


@pytest.mark.parametrize("change, words_in_error", [
    (lambda h: [1, 2], ["JSON object"]),
    (lambda h: {k: v for k, v in h.items() if k != "params"}, ["no 'params'"]),
    (lambda h: dict(h, params="n_atoms=32"), ["'params' entry is malformed"]),
    (lambda h: dict(h, format_version=99), ["format version"]),
    (lambda h: dict(h, params=dict(h["params"], n_atoms=-3)), ["n_atoms"]),
    (lambda h: dict(h, params=dict(h["params"], coding="dense")), ["coding"]),
    (lambda h: dict(h, params=dict(h["params"], whiten_eps=None)), ["whiten_eps"]),
    (lambda h: dict(h, params=dict(h["params"], evil=1)), ["unknown SMT parameter", "evil"]),
    (lambda h: dict(h, params=dict(h["params"], random_state={"RandomState": [1]})), ["random_state"]),
    (lambda h: dict(h, params=dict(h["params"], random_state=-4)), ["random_state"]),
    (lambda h: dict(h, params=dict(h["params"], n_atoms=64)), ["dictionary_", "shape"]),
    (lambda h: dict(h, params=dict(h["params"], n_components=5)), ["components_", "shape"]),
    (lambda h: dict(h, params=dict(h["params"], patch_size=4)), ["shape"]),
    (lambda h: dict(h, image_shape=[8, 8]), ["image_shape"]),
    (lambda h: dict(h, image_shape="8x8"), ["'image_shape' entry is malformed"]),
    (lambda h: {k: v for k, v in h.items() if k != "image_shape"}, ["no 'image_shape'"]),
])
def test_malformed_header(model_bytes, tmp_path, change, words_in_error):
    path = tmp_path / "model.npz"
    path.write_bytes(model_bytes)
    _rewrite(path, meta=change)
    with pytest.raises(ModelFileError) as e:
        SMT.load(path)
    _expect(e, path, *words_in_error)


@pytest.mark.parametrize("arrays, drop, words_in_error", [
    ({"components_": np.zeros((6, 31))}, (), ["components_", "(6, 31)"]),
    ({"dictionary_": np.zeros((32, 8))}, (), ["dictionary_"]),
    ({"whitening_": np.full((9, 9), np.nan)}, (), ["whitening_", "finite"]),
    ({"eigenvalues_": np.array(["a"] * 6)}, (), ["eigenvalues_", "finite floats"]),
    ({}, ("coloring_",), ["coloring_", "missing"]),
])
def test_malformed_arrays(model_bytes, tmp_path, arrays, drop, words_in_error):
    path = tmp_path / "model.npz"
    path.write_bytes(model_bytes)
    _rewrite(path, drop=drop, **arrays)
    with pytest.raises(ModelFileError) as e:
        SMT.load(path)
    _expect(e, path, *words_in_error)


def test_malformed_stream_state(images, tmp_path):
    model = small_smt(front_end_images=100).partial_fit(images[:50])
    path = tmp_path / "stream.npz"
    model.save(path, stream=True)
    good = path.read_bytes()
    _rewrite(path, **{"stats.gram": np.zeros(7)})
    with pytest.raises(ModelFileError) as e:
        SMT.load(path)
    _expect(e, path, "stream", "stats.gram")
    path.write_bytes(good)
    _rewrite(path, meta=lambda h: dict(h, stream={"seed": 1}))
    with pytest.raises(ModelFileError) as e:
        SMT.load(path)
    _expect(e, path, "stream")


def test_word_file_damage(words, tmp_path):
    path = tmp_path / "words.npz"
    words.save(path)
    good = path.read_bytes()
    for change, drop, arrays, what in [
            (None, (), {"components": np.zeros((2, 3))}, "components"),
            (None, ("counts",), {}, "counts"),
            (None, (), {"vocabulary": np.arange(3)}, "vocabulary"),
            (lambda h: dict(h, params=dict(h["params"], window=0)), (), {}, "window"),
            (lambda h: dict(h, params=dict(h["params"], tokenizer="mine")), (), {}, "tokenizer"),
            (lambda h: {k: v for k, v in h.items() if k != "n_tokens"}, (), {}, "n_tokens")]:
        path.write_bytes(good)
        _rewrite(path, meta=change, drop=drop, **arrays)
        with pytest.raises(ModelFileError) as e:
            SMTWordEmbedding.load(path)
        _expect(e, path, what)
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(ModelFileError) as e:
        SMTWordEmbedding.load(path)
    _expect(e, path, "truncated")


def test_model_file_decides_no_path_and_no_device(model, images, tmp_path):
    # A file that names a checkpoint path and a device: neither is honoured by load.
    target = tmp_path / "elsewhere" / "written-by-the-file.npz"
    path = tmp_path / "model.npz"
    model.save(path)
    _rewrite(path, meta=lambda h: dict(h, params=dict(h["params"], checkpoint_path=str(target), device="cuda:7")))
    loaded = SMT.load(path)
    assert loaded.checkpoint_path is None and loaded.device == "auto"
    assert SMT.load(path, device="cpu").device == "cpu"
    loaded.fit(images)
    assert not target.exists() and not target.parent.exists()
    # and save does not write them
    copy.deepcopy(model).set_params(checkpoint_path=str(tmp_path / "ck.npz"), device="cpu").save(path)
    with np.load(path, allow_pickle=False) as f:
        params = json.loads(str(f["__meta__"]))["params"]
    assert "checkpoint_path" not in params and "device" not in params


def test_save_accepts_what_the_constructor_accepts(images, tmp_path):
    model = small_smt(n_atoms=np.int64(32), n_components=np.int32(6), threshold=np.float32(0.3),
                      random_state=np.random.RandomState(3), device=torch.device("cpu"),
                      normalize_output=np.bool_(True), checkpoint_path=tmp_path / "ck.npz").fit(images)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = SMT.load(path)
    assert isinstance(loaded.random_state, np.random.RandomState)
    assert loaded.n_atoms == 32 and loaded.normalize_output is True
    np.testing.assert_array_equal(loaded.transform(images[:5]), model.transform(images[:5]))
    assert loaded.get_params()["random_state"].get_state()[1].tolist() == model.random_state.get_state()[1].tolist()


def test_failed_save_leaves_nothing(model, tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()
    # a parameter set to what the constructor refuses: refused before any file is made
    monkeypatch.setattr(model, "verbose", object(), raising=False)
    with pytest.raises(ValueError, match="verbose"):
        model.save(path)
    monkeypatch.undo()
    # a write that fails half way (disk full)
    real = np.savez

    def half_then_fail(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        model.save(path)
    monkeypatch.setattr(np, "savez", real)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"] and path.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        model.save(tmp_path / "no" / "such" / "dir" / "model.npz")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
