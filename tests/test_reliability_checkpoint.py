"""A checkpoint is only ever resumed for the same data and parameters, and a damaged one is named
(issue 18, items 1 and 4)."""
import json

import numpy as np
import pytest
import torch

from smt._io import ModelFileError

from conftest import small_smt


@pytest.fixture(scope="module")
def X(digits):
    return digits[0][:160]


@pytest.fixture(scope="module")
def done_bytes(X, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "fit.npz"
    small_smt(checkpoint_path=str(path)).fit(X)
    return path.read_bytes()


@pytest.fixture
def done(done_bytes, tmp_path):
    """A checkpoint left by a completed fit of X."""
    path = tmp_path / "fit.npz"
    path.write_bytes(done_bytes)
    return path


def _refused(X, path, *words, **params):
    with pytest.raises(ValueError) as e:
        small_smt(checkpoint_path=str(path), **params).fit(X)
    msg = str(e.value)
    assert str(path) in msg and "start over" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_same_data_and_parameters_resume(X, done):
    resumed = small_smt(checkpoint_path=str(done)).fit(X)
    fresh = small_smt().fit(X)
    np.testing.assert_array_equal(resumed.dictionary_, fresh.dictionary_)
    np.testing.assert_array_equal(resumed.transform(X[:20]), fresh.transform(X[:20]))


@pytest.mark.parametrize("params", [{}, {"coding": "threshold", "threshold": 0.2}])
def test_a_finished_fit_resumed_reports_its_active_atoms(X, tmp_path, params):
    # A finished fit resumed codes no image again, but still reports the mean active atoms per
    # non-empty patch, from its statistics (the fraction left uncoded is not kept).
    path = tmp_path / "c.npz"
    fresh = small_smt(checkpoint_path=str(path), **params).fit(X)
    resumed = small_smt(checkpoint_path=str(path), **params).fit(X)
    assert resumed.fit_stats_["mean_active_atoms"] == pytest.approx(fresh.fit_stats_["mean_active_atoms"], rel=1e-12)
    assert "uncoded_fraction" not in resumed.fit_stats_
    if params:
        assert fresh.fit_stats_["mean_active_atoms"] > 1


@pytest.mark.parametrize("where", [1, 80, 158])
def test_one_image_replaced_anywhere_is_refused(X, done, where):
    # Not only the first and last images: any image the state depends on.
    other = X.copy()
    other[where] = X[where][::-1]
    _refused(other, done, "other images", "hash")


def test_one_pixel_changed_is_refused(X, done):
    other = X.copy()
    other[77, 3, 4] += 1 / 16 if other[77, 3, 4] < 1 else -1 / 16
    _refused(other, done, "other images")


def test_same_pixels_other_dtype_or_order_are_refused(X, done):
    _refused(X.astype(np.float32), done, "float32")
    _refused(X[::-1].copy(), done, "other images")
    _refused(X[:100], done, "(100, 8, 8, 1)")


@pytest.mark.parametrize("param", [dict(n_atoms=24), dict(threshold=0.5), dict(whiten_eps=0.2), dict(random_state=1),
                                   dict(batch_size=64), dict(context=2), dict(dict_lr=0.2)])
def test_any_model_parameter_change_is_refused(X, done, param):
    name, value = next(iter(param.items()))
    msg = _refused(X, done, f"{name}={value!r}", **param)
    assert "the checkpoint's fit had" in msg


def test_runtime_parameters_do_not_matter(X, done):
    small_smt(checkpoint_path=str(done), checkpoint_every=7, verbose=False, device="cpu").fit(X)


def _forbid_statistics(monkeypatch):
    """Make any statistics pass fail: a resumed finished fit must go straight to the solve."""
    from smt.statistics import ContextStatistics

    def no_statistics(*args, **kwargs):
        raise AssertionError("the resumed fit ran the statistics pass again")
    monkeypatch.setattr(ContextStatistics, "partial_fit", no_statistics)
    monkeypatch.setattr(ContextStatistics, "partial_fit_lists", no_statistics)


@pytest.mark.parametrize("param", [dict(n_components=4), dict(n_skip=3), dict(pool_size=2, pool_stride=2),
                                   dict(pool_sigma=1.5), dict(normalize_output=True)])
def test_transform_parameters_reuse_the_statistics(X, done, param, monkeypatch):
    # One statistics pass serves every d, n_skip and pooling: the finished checkpoint is resumed,
    # no image is coded again, and the model is the one a fresh fit with these settings makes.
    fresh = small_smt(**param).fit(X)
    _forbid_statistics(monkeypatch)
    resumed = small_smt(checkpoint_path=str(done), **param).fit(X)
    np.testing.assert_array_equal(resumed.components_, fresh.components_)
    np.testing.assert_array_equal(resumed.transform(X[:20]), fresh.transform(X[:20]))


def _drop_param(path, name):
    def change(header):
        del header["params"][name]
        return header
    _rewrite_header(path, change)


def test_a_parameter_added_since_the_file_counts_as_its_default(X, done):
    # A checkpoint written before center_patches existed was centred, as the default is now.
    _drop_param(done, "center_patches")
    small_smt(checkpoint_path=str(done)).fit(X)
    _refused(X, done, "center_patches=False", "the checkpoint's fit had True", center_patches=False)


def test_one_centring_spelled_two_ways_resumes(X, done, monkeypatch):
    # center_patches=True is the per-channel centring, "channel": a fit written under one
    # spelling resumes under the other (stop 30: the benchmark's default True met a file of
    # "channel" and refused it), with no image coded again; another centring is still refused.
    fresh = small_smt().fit(X)
    _forbid_statistics(monkeypatch)
    resumed = small_smt(checkpoint_path=str(done), center_patches="channel").fit(X)
    np.testing.assert_array_equal(resumed.transform(X[:20]), fresh.transform(X[:20]))
    monkeypatch.undo()
    _refused(X, done, "center_patches='patch'", "the checkpoint's fit had True", center_patches="patch")

    other = done.with_name("channel.npz")
    small_smt(checkpoint_path=str(other), center_patches="channel").fit(X)
    _forbid_statistics(monkeypatch)
    small_smt(checkpoint_path=str(other), center_patches=True).fit(X)


def test_tensor_input_resumes_and_is_fingerprinted(X, tmp_path):
    path = tmp_path / "t.npz"
    t = torch.as_tensor(X, dtype=torch.float32)
    first = small_smt(checkpoint_path=str(path)).fit(t)
    again = small_smt(checkpoint_path=str(path)).fit(t.clone())
    np.testing.assert_array_equal(first.components_, again.components_)
    t2 = t.clone()
    t2[5] = 0
    _refused(t2, path, "other images")
    _refused(t.to(torch.bfloat16), path, "bfloat16")


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped", "text", "directory"])
def test_damaged_checkpoint_is_named(X, done, damage):
    data = done.read_bytes()
    if damage == "empty":
        done.write_bytes(b"")
    elif damage == "truncated":
        done.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0x04
        done.write_bytes(bytes(flipped))
    elif damage == "text":
        done.write_text("not a checkpoint")
    else:
        done.unlink()
        done.mkdir()
    with pytest.raises(ModelFileError) as e:
        small_smt(checkpoint_path=str(done)).fit(X)
    assert str(done) in str(e.value) and "start over" in str(e.value)


def _rewrite_header(path, change):
    with np.load(path, allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    header = change(json.loads(str(content.pop("__meta__"))))
    np.savez(path, __meta__=np.array(json.dumps(header)), **content)


@pytest.mark.parametrize("change, words", [
    (lambda h: dict(h, run={"phase": "elsewhere", "epoch": 0, "batch": 0, "seed": 1}), ["position"]),
    (lambda h: dict(h, run=dict(h["run"], batch=-5)), ["position"]),
    (lambda h: dict(h, run="done"), ["'run' entry is malformed"]),
    (lambda h: {k: v for k, v in h.items() if k != "fingerprint"}, ["no 'fingerprint'"]),
    (lambda h: dict(h, format_version=0), ["format version"]),
    (lambda h: dict(h, kind="SMTWordEmbedding"), ["SMTWordEmbedding model file, not an SMT checkpoint"]),
])
def test_malformed_checkpoint_header(X, done, change, words):
    _rewrite_header(done, change)
    with pytest.raises(ModelFileError) as e:
        small_smt(checkpoint_path=str(done)).fit(X)
    for w in [str(done), "start over", *words]:
        assert w in str(e.value), str(e.value)


def test_model_file_given_as_checkpoint(X, tmp_path):
    path = tmp_path / "model.npz"
    small_smt().fit(X).save(path)
    with pytest.raises(ModelFileError, match="an SMT model file, not an SMT checkpoint"):
        small_smt(checkpoint_path=str(path)).fit(X)


def test_checkpoint_of_another_state_shape_is_named(X, done):
    with np.load(done, allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    content["stats.gram"] = np.zeros(3)
    header = json.loads(str(content["__meta__"]))
    header["run"] = dict(header["run"], phase="statistics", batch=0)
    content["__meta__"] = np.array(json.dumps(header))
    np.savez(done, **content)
    with pytest.raises(ModelFileError) as e:
        small_smt(checkpoint_path=str(done)).fit(X)
    assert str(done) in str(e.value) and "start over" in str(e.value)

