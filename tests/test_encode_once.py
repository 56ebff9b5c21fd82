"""fit_transform encodes every training patch once and gives what fit + transform give."""
import numpy as np
import pytest
import torch

import smt.code_store
from smt import SMT
from smt.code_store import CodeStore

from conftest import small_smt


def _rgb(rng, n=60, size=10):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("params", [
    dict(),                                                     # one-sparse codes, window context
    dict(coding="threshold", threshold=0.4, context="image"),   # threshold codes of varying width
    dict(coding="top_k", n_nonzero=3, code_norm="l1"),          # real-valued coefficients
])
def test_fit_transform_equals_fit_then_transform(digits, params):
    X, _ = digits
    z = small_smt(**params).fit_transform(X[:300])
    reference = small_smt(**params).fit(X[:300]).transform(X[:300])
    assert z.dtype == np.float32 and z.shape == reference.shape
    np.testing.assert_array_equal(z, reference)


def test_fit_transform_encodes_each_patch_once(digits, monkeypatch):
    X, _ = digits
    model = small_smt(coding="threshold", threshold=0.4)
    calls = []
    # the padded coder, and the list coder of the statistics pass (binary threshold codes on CPU)
    for name in ("_code", "_code_lists"):
        def counted(self, patches, *args, _code=getattr(SMT, name), **kwargs):
            out = _code(self, patches, *args, **kwargs)
            if out is not None:
                calls.append(patches.shape[0])
            return out
        monkeypatch.setattr(SMT, name, counted)
    model.fit_transform(X[:300])
    assert sum(calls) == 300


def test_fit_transform_with_gray_views_embeds_the_colour_images(rng):
    X = _rgb(rng)
    params = dict(n_atoms=24, n_components=4, grayscale_augmentation="paired", context="image")
    z = small_smt(**params).fit_transform(X)
    np.testing.assert_array_equal(z, small_smt(**params).fit(X).transform(X))


def test_codes_spill_to_a_file_and_give_the_same_embeddings(digits, monkeypatch, tmp_path):
    X, _ = digits
    monkeypatch.setattr(smt.code_store, "MEMORY_BUDGET", 60_000)  # a batch in memory, the rest on disk
    monkeypatch.setattr(smt.code_store.tempfile, "tempdir", str(tmp_path))
    on_disk = []
    append = CodeStore.append_lists  # append (padded codes) goes through it too

    def watched(self, atoms, counts):
        append(self, atoms, counts)
        on_disk.append(self._file is not None)
    monkeypatch.setattr(CodeStore, "append_lists", watched)
    params = dict(coding="threshold", threshold=0.4)
    chunks = list(small_smt(**params).fit_transform_chunks(X[:500], chunk_size=200))
    assert on_disk[0] is False and on_disk[-1] is True
    assert [len(c) for c in chunks] == [200, 200, 100]
    np.testing.assert_array_equal(np.concatenate(chunks), small_smt(**params).fit(X[:500]).transform(X[:500]))
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_code_store_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    store = CodeStore(70_000, memory_budget=2_000, dir=str(tmp_path))  # int32 atoms beyond uint16
    batches = []
    for n in (3, 5, 4):
        idx = torch.randint(0, 70_000, (n, 4, 5, 7), generator=gen)
        idx[torch.rand(idx.shape, generator=gen) < 0.5] = -1
        store.append(idx)
        batches.append(idx)
    assert len(store) == 3 and store.n_images_ == 12
    for idx, (atoms, counts) in zip(batches, store):
        assert torch.equal(atoms.long(), idx[idx >= 0])
        assert torch.equal(counts.long(), (idx >= 0).sum(-1))
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_fit_transform_chunks_rejects_a_bad_chunk_size(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="chunk_size"):
        next(small_smt().fit_transform_chunks(X[:100], chunk_size=0))


def test_fit_transform_returns_a_tensor_for_a_tensor(digits):
    X, _ = digits
    z = small_smt().fit_transform(torch.as_tensor(X[:200], dtype=torch.float32))
    assert isinstance(z, torch.Tensor) and z.shape[0] == 200



def test_dense_codes_are_coded_in_steps_within_the_memory_budget(digits, monkeypatch):
    """A batch whose padded codes would pass the budget is coded in several steps: same model."""
    import smt.image
    X, _ = digits
    params = dict(coding="threshold", threshold=0.1, context="image", batch_size=200)
    reference = small_smt(**params).fit(X[:400])
    widths = []
    for name in ("_code", "_code_lists"):
        def recorded(self, patches, *args, _code=getattr(SMT, name), **kwargs):
            out = _code(self, patches, *args, **kwargs)
            if out is not None:  # the widest code of the step, padded or not
                widths.append((patches.shape[0], self._code_width))
            return out
        monkeypatch.setattr(SMT, name, recorded)
    monkeypatch.setattr(smt.image, "_CODE_BYTES", 200 * 36 * 24 * 4)  # 200 images of width 4
    model = small_smt(**params).fit(X[:400])
    assert max(n for n, _ in widths) < 200 and sum(n for n, _ in widths) == 400
    assert all(n * 36 * w * 24 <= 2 * smt.image._CODE_BYTES for n, w in widths[1:])
    np.testing.assert_array_equal(model.components_, reference.components_)
    np.testing.assert_array_equal(model.transform(X[:50]), reference.transform(X[:50]))


@pytest.mark.parametrize("params", [
    dict(coding="threshold", threshold=0.4, context="image"),
    dict(coding="threshold", threshold=0.4, context="image", empty_code="argmax", precision="bf16"),
    dict(coding="threshold", threshold=0.4, context=1),                     # window: the padded fallback
    dict(coding="threshold", threshold=0.4, context="image", grayscale_augmentation="paired"),
])
def test_statistics_from_flat_lists_equal_the_padded_codes(params, monkeypatch):
    """The statistics pass and ``transform`` take binary threshold codes as flat lists (no padded
    arrays): the same sums, model, kept codes and embeddings as the padded path, constant patches
    included."""
    rng = np.random.default_rng(3)
    X = _rgb(rng)
    X[:5, :4] = 128  # constant patches
    fast = small_smt(**params)
    z_fast = fast.fit_transform(X)
    t_fast = fast.transform(X)
    monkeypatch.setattr(SMT, "_code_lists", lambda self, *a: None)
    slow = small_smt(**params)
    z_slow = slow.fit_transform(X)
    np.testing.assert_array_equal(t_fast, slow.transform(X))
    np.testing.assert_array_equal(t_fast, z_fast)
    for name in ("gram_", "context_", "usage_"):
        assert torch.equal(getattr(fast._stats, name), getattr(slow._stats, name)), name
    assert fast._stats.n_patches_ == slow._stats.n_patches_
    np.testing.assert_array_equal(fast.components_, slow.components_)
    np.testing.assert_array_equal(z_fast, z_slow)
    assert fast.fit_stats_["mean_active_atoms"] == slow.fit_stats_["mean_active_atoms"]
