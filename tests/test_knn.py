"""Tests for smt.knn: the weighted cosine kNN evaluation protocol."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import KNeighborsClassifier

from smt.knn import ReferenceDensity, StreamingKNN, knn_accuracy
from smt.knn import _decode, _encode


def _stream(knn, refs, labels, chunk):
    for start in range(0, len(refs), chunk):
        knn.update(refs[start:start + chunk], labels[start:start + chunk])
    return knn


# --------------------------------------------------------------------------- #
# (1) hand-checkable example
# --------------------------------------------------------------------------- #
# Query along +x; references at 0, 30, 60, 90 and 180 degrees, with different
# norms (normalisation must remove them).  Cosines: 1, sqrt(3)/2, 1/2, 0, -1.
ANGLES = np.deg2rad([0.0, 30.0, 60.0, 90.0, 180.0])
NORMS = np.array([3.0, 0.5, 2.0, 1.0, 7.0])
REFS = NORMS[:, None] * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
REF_LABELS = np.array([0, 1, 1, 0, 1])
QUERY = np.array([[2.0, 0.0]])


@pytest.mark.parametrize("temperature", [0.03, 1.0])
def test_hand_computed_votes(temperature):
    knn = StreamingKNN(QUERY, k=3, temperature=temperature, device="cpu")
    knn.update(REFS, REF_LABELS)

    sims, labels, idx = knn.neighbors()
    assert idx.tolist() == [[0, 1, 2]]
    assert labels.tolist() == [[0, 1, 1]]
    np.testing.assert_allclose(sims.numpy(), [[1.0, math.sqrt(3) / 2, 0.5]], atol=1e-6)

    t = temperature
    expected = np.array([[math.exp(1.0 / t), math.exp(math.sqrt(3) / 2 / t) + math.exp(0.5 / t)]])
    scores = knn.predict_scores(2)
    assert scores.shape == (1, 2) and scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
    # extra columns for unseen classes get zero votes
    np.testing.assert_allclose(knn.predict_scores(4).numpy()[:, 2:], 0.0)
    # stabilised votes are the same up to the factor exp(max s / T) = exp(1 / T)
    np.testing.assert_allclose(
        knn.predict_scores(2, stabilize=True).numpy(), expected / math.exp(1.0 / t), rtol=1e-5
    )

    # T = 0.03: the single exact match dominates; T = 1: the two class-1 votes win
    # (e^1 = 2.72 < e^0.866 + e^0.5 = 4.03).
    assert knn.predict().tolist() == ([0] if temperature == 0.03 else [1])


def test_k_larger_than_reference_set_uses_all():
    knn = StreamingKNN(QUERY, k=30, temperature=1.0, device="cpu")
    knn.update(REFS, REF_LABELS)
    sims, _, idx = knn.neighbors()
    assert idx.tolist() == [[0, 1, 2, 3, 4]]
    cos = np.cos(ANGLES)
    expected = [np.exp(cos[REF_LABELS == c]).sum() for c in (0, 1)]
    np.testing.assert_allclose(knn.predict_scores().numpy(), [expected], rtol=1e-5)


# --------------------------------------------------------------------------- #
# (2) chunking and batching do not change anything
# --------------------------------------------------------------------------- #
def test_streaming_matches_single_chunk_exactly():
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((97, 12)).astype(np.float32)
    labels = rng.integers(0, 7, size=97)
    queries = rng.standard_normal((23, 12))

    ref_knn = StreamingKNN(queries, k=10, device="cpu")
    ref_knn.update(refs, labels)
    want_sims, want_labels, want_idx = ref_knn.neighbors()
    want_scores = ref_knn.predict_scores(7)

    for chunk, qbatch in [(1, 1), (2, 5), (3, 23), (10, 4), (11, 1000), (50, 7), (97, 2)]:
        knn = _stream(StreamingKNN(queries, k=10, device="cpu", query_batch_size=qbatch),
                      refs, labels, chunk)
        sims, got_labels, idx = knn.neighbors()
        assert knn.n_references == 97
        assert torch.equal(idx, want_idx), (chunk, qbatch)
        assert torch.equal(got_labels, want_labels)
        # float32 GEMMs of different shapes may round differently (1 ulp)
        torch.testing.assert_close(sims, want_sims, rtol=0, atol=5e-7)
        torch.testing.assert_close(knn.predict_scores(7), want_scores, rtol=2e-5, atol=0)
        assert torch.equal(knn.predict(), ref_knn.predict())
        assert knn.accuracy(labels[:23]) == ref_knn.accuracy(labels[:23])


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(1)
    refs = rng.standard_normal((40, 5))
    labels = rng.integers(0, 3, size=40)
    queries = rng.standard_normal((9, 5))
    a = StreamingKNN(queries, k=5, device="cpu")
    a.update(refs, labels)
    b = StreamingKNN(torch.from_numpy(queries).float(), k=5, device=torch.device("cpu"))
    b.update(torch.from_numpy(refs), torch.from_numpy(labels))
    assert torch.equal(a.predict_scores(), b.predict_scores())


def test_knn_accuracy_array_and_iterable_agree():
    x, y = make_blobs(n_samples=300, centers=6, n_features=8, cluster_std=4.0, random_state=3)
    xtr, ytr, xte, yte = x[:200], y[:200], x[200:], y[200:]
    full = knn_accuracy(xtr, ytr, xte, yte, k=7, device="cpu")
    chunked = knn_accuracy(xtr, ytr, xte, yte, k=7, device="cpu", batch_size=13, query_batch_size=9)
    gen = ((torch.from_numpy(xtr[i:i + 31]), ytr[i:i + 31]) for i in range(0, 200, 31))
    streamed = knn_accuracy(gen, None, torch.from_numpy(xte), torch.from_numpy(yte), k=7, device="auto")
    assert full == chunked == streamed
    assert set(full) == {"top1", "top5"}


# --------------------------------------------------------------------------- #
# (3) agreement with scikit-learn
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("k,temperature", [(30, 0.03), (5, 0.1), (1, 0.03)])
def test_matches_sklearn_weighted_cosine_knn(k, temperature):
    x, y = make_blobs(n_samples=700, centers=8, n_features=10, cluster_std=5.0, random_state=0)
    xtr, ytr, xte, yte = x[:500], y[:500], x[500:], y[500:]

    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1.0 - d) / temperature))
    clf.fit(xtr, ytr)
    want = clf.classes_[clf.predict_proba(xte).argmax(axis=1)]

    knn = _stream(StreamingKNN(xte, k=k, temperature=temperature, device="cpu", query_batch_size=64),
                  xtr, ytr, 128)
    got = knn.predict().numpy()
    np.testing.assert_array_equal(got, want)
    assert 0 < (got != yte).sum()  # the task is not trivial

    _, sk_idx = clf.kneighbors(xte)
    np.testing.assert_array_equal(knn.neighbors()[2].numpy(), sk_idx)

    acc = knn_accuracy(xtr, ytr, xte, yte, k=k, temperature=temperature, topk=(1,), device="cpu")
    assert acc["top1"] == pytest.approx(100.0 * (want == yte).mean())


# --------------------------------------------------------------------------- #
# (4) deterministic tie-breaking
# --------------------------------------------------------------------------- #
def test_ties_keep_lowest_reference_index():
    base = np.array([[1.0, 2.0, 3.0], [-3.0, 1.0, 0.5], [0.2, -1.0, 4.0]])
    # rows 1, 3, 5, 6 are identical to the query direction; their labels differ
    refs = np.stack([base[1], base[0], base[2], base[0], base[1], base[0], base[0]])
    labels = np.array([0, 3, 0, 1, 0, 2, 2])
    query = base[[0]] * 5.0

    for chunk in (1, 2, 3, 4, 7):
        for k, want in [(1, [1]), (2, [1, 3]), (3, [1, 3, 5]), (4, [1, 3, 5, 6])]:
            knn = _stream(StreamingKNN(query, k=k, device="cpu"), refs, labels, chunk)
            sims, got_labels, idx = knn.neighbors()
            assert idx.tolist() == [want], (chunk, k)
            assert got_labels.tolist() == [labels[want].tolist()]
            assert float(sims.min()) == float(sims.max())  # genuinely tied
        # k = 2: classes 3 and 1 get exactly the same vote -> lower class index wins
        knn = _stream(StreamingKNN(query, k=2, device="cpu"), refs, labels, chunk)
        scores = knn.predict_scores()
        assert scores[0, 1] == scores[0, 3]
        assert knn.predict().tolist() == [1]


def test_ties_are_deterministic_across_many_duplicates():
    rng = np.random.default_rng(5)
    protos = rng.standard_normal((4, 6))
    which = rng.integers(0, 4, size=200)
    refs, labels = protos[which], rng.integers(0, 10, size=200)
    queries = protos + 0.01 * rng.standard_normal((4, 6))
    knn = _stream(StreamingKNN(queries, k=8, device="cpu"), refs, labels, 17)
    idx = knn.neighbors()[2].numpy()
    for q in range(4):
        np.testing.assert_array_equal(idx[q], np.flatnonzero(which == q)[:8])


def test_encode_decode_roundtrip_and_order():
    sims = torch.tensor([[-1.0, -0.5, -0.0, 0.0, 1e-30, 0.25, 1.0, -1e-30]])
    gidx = torch.tensor([7, 3, 5, 2, 0, 2**32 - 1, 1, 4])
    keys = _encode(sims, gidx)
    got_sims, got_idx = _decode(keys)
    assert torch.equal(got_sims, sims + 0.0) and torch.equal(got_idx, gidx[None])
    order = torch.argsort(keys[0], descending=True).tolist()
    assert order == [6, 5, 4, 3, 2, 7, 1, 0]  # -0.0 ties with +0.0 -> lower index (2) first


# --------------------------------------------------------------------------- #
# (5) accuracy values
# --------------------------------------------------------------------------- #
def test_topk_accuracy_bounds_and_perfect_separation():
    x, y = make_blobs(n_samples=600, centers=10, n_features=6, cluster_std=6.0, random_state=2)
    acc = knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=20, device="cpu", batch_size=100)
    assert 0.0 <= acc["top1"] <= acc["top5"] <= 100.0
    assert acc["top1"] < 100.0

    # one-hot classes: every test point lies on its class axis
    n_classes = 12
    eye = np.eye(n_classes)
    train = np.repeat(eye, 3, axis=0) * np.linspace(0.5, 2.0, 3 * n_classes)[:, None]
    train_y = np.repeat(np.arange(n_classes), 3)
    test = eye * 4.0 + 0.01
    acc = knn_accuracy(train, train_y, test, np.arange(n_classes), k=5, topk=(1, 5, 20), device="cpu")
    assert acc == {"top1": 100.0, "top5": 100.0, "top20": 100.0}


def test_top5_by_hand():
    # 6 classes; the query's votes rank the classes 0 > 1 > 2 > 3 > 4 > 5 (5 gets none)
    refs = np.array([[1.0, 0.0], [0.99, 0.14], [0.97, 0.24], [0.95, 0.31], [0.9, 0.43], [0.0, 1.0]])
    knn = StreamingKNN(np.array([[1.0, 0.0]]), k=5, device="cpu")
    knn.update(refs, np.arange(6))
    assert knn.ranked_classes().tolist() == [[0, 1, 2, 3, 4, 5]]
    assert knn.accuracy([4]) == {"top1": 0.0, "top5": 100.0}
    assert knn.accuracy([5]) == {"top1": 0.0, "top5": 0.0}
    assert knn.accuracy([0], topk=(1, 2)) == {"top1": 100.0, "top2": 100.0}


# --------------------------------------------------------------------------- #
# (6) input validation
# --------------------------------------------------------------------------- #
def test_errors():
    q = np.ones((3, 4))
    with pytest.raises(ValueError, match="k must be"):
        StreamingKNN(q, k=0)
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(q, [0, 1, 2], q, [0, 1, 2], k=-1, device="cpu")
    with pytest.raises(ValueError, match="temperature"):
        StreamingKNN(q, temperature=0.0)
    with pytest.raises(ValueError, match="NaN"):
        StreamingKNN(np.array([[1.0, np.nan]]), device="cpu")
    with pytest.raises(ValueError, match="empty"):
        StreamingKNN(np.zeros((0, 4)), device="cpu")
    with pytest.raises(ValueError, match="2-D"):
        StreamingKNN(np.ones(4), device="cpu")

    knn = StreamingKNN(q, k=2, device="cpu")
    with pytest.raises(ValueError, match="reference set is empty"):
        knn.predict()
    with pytest.raises(ValueError, match="reference set is empty"):
        knn.neighbors()
    knn.update(np.zeros((0, 4)), np.zeros(0, dtype=int))  # an empty chunk is a no-op
    with pytest.raises(ValueError, match="reference set is empty"):
        knn.predict_scores(3)
    with pytest.raises(ValueError, match="features"):
        knn.update(np.ones((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="entries"):
        knn.update(np.ones((2, 4)), [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        knn.update(np.array([[1.0, 2.0, np.inf, 0.0]]), [0])
    with pytest.raises(ValueError, match="NaN"):
        knn.update(torch.tensor([[1.0, 2.0, float("nan"), 0.0]]), [0])
    with pytest.raises(ValueError, match="non-negative"):
        knn.update(np.ones((1, 4)), [-1])
    with pytest.raises(ValueError, match="integer"):
        knn.update(np.ones((1, 4)), [0.5])
    assert knn.n_references == 0  # failed updates leave the state untouched
    knn.update(np.ones((2, 4)), [0, 4])
    with pytest.raises(ValueError, match="n_classes"):
        knn.predict_scores(3)
    with pytest.raises(ValueError, match="labels"):
        knn.accuracy([0, 1])

    train, labels = np.ones((5, 4)), np.arange(5)
    with pytest.raises(ValueError, match="features"):
        knn_accuracy(train, labels, np.ones((2, 3)), [0, 1], device="cpu")
    with pytest.raises(ValueError, match="train_labels has"):
        knn_accuracy(train, labels[:4], q, [0, 1, 2], device="cpu")
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(train, labels, q, [0, 1], device="cpu")
    with pytest.raises(ValueError, match="train_labels is required"):
        knn_accuracy(train, None, q, [0, 1, 2], device="cpu")
    with pytest.raises(ValueError, match="train_labels must be None"):
        knn_accuracy([(train, labels)], labels, q, [0, 1, 2], device="cpu")
    with pytest.raises(ValueError, match="reference set is empty"):
        knn_accuracy(iter([]), None, q, [0, 1, 2], device="cpu")
    with pytest.raises(ValueError, match="reference set is empty"):
        knn_accuracy(np.zeros((0, 4)), np.zeros(0, dtype=int), q, [0, 1, 2], device="cpu")
    with pytest.raises(TypeError, match="pair"):
        knn_accuracy([train], None, q, [0, 1, 2], device="cpu")


def test_zero_vectors_do_not_produce_nan():
    knn = StreamingKNN(np.zeros((1, 3)), k=2, device="cpu")
    knn.update(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), [1, 0])
    scores = knn.predict_scores()
    assert torch.isfinite(scores).all()
    assert knn.predict().tolist() == [0]  # both similarities are 0: equal votes


@pytest.mark.parametrize("k", [1, 3, 10, 64])
def test_many_exact_ties_match_stable_oracle(k):
    # unit vectors with four entries of +-1/2: every cosine is an exact multiple of 1/4,
    # so whole blocks of references tie and the float arithmetic is exact
    rng = np.random.default_rng(k)

    def unit(n):
        x = np.zeros((n, 8))
        for row in x:
            row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return x

    refs, queries = unit(60), unit(9)
    labels = rng.integers(0, 5, size=60)
    sims = queries @ refs.T
    want = np.stack([np.lexsort((np.arange(60), -row))[:k] for row in sims])
    for chunk in (1, 4, 13, 60):
        knn = _stream(StreamingKNN(queries, k=k, device="cpu", query_batch_size=4), refs, labels, chunk)
        got_sims, got_labels, idx = knn.neighbors()
        np.testing.assert_array_equal(idx.numpy(), want[:, : min(k, 60)])
        np.testing.assert_array_equal(got_labels.numpy(), labels[want[:, : min(k, 60)]])
        np.testing.assert_array_equal(got_sims.numpy(), np.take_along_axis(sims, want, 1))


def test_vote_over_fewer_neighbours_matches_a_smaller_knn():
    # One pass keeping 30 neighbours scores the k 20 / T 0.07 protocol exactly like a k 20 pass.
    rng = np.random.default_rng(0)
    refs, queries = rng.normal(size=(300, 8)), rng.normal(size=(50, 8))
    ref_labels, labels = rng.integers(0, 5, 300), rng.integers(0, 5, 50)
    wide = StreamingKNN(queries, k=30, device="cpu")
    narrow = StreamingKNN(queries, k=20, temperature=0.07, device="cpu")
    for knn in (wide, narrow):
        knn.update(refs, ref_labels)
    torch.testing.assert_close(wide.predict_scores(k=20, temperature=0.07), narrow.predict_scores())
    assert wide.accuracy(labels, k=20, temperature=0.07) == narrow.accuracy(labels)
    with pytest.raises(ValueError, match="exceeds the 30 neighbours"):
        wide.predict_scores(k=31)
    with pytest.raises(ValueError, match="temperature"):
        wide.accuracy(labels, temperature=0)


# --------------------------------------------------------------------------- #
# precision="bf16": a bf16 screen, float32 neighbours
# --------------------------------------------------------------------------- #
def _streamed(queries, refs, labels, precision, chunk, k=30):
    knn = StreamingKNN(queries, k=k, device="cpu", precision=precision)
    for start in range(0, len(refs), chunk):
        knn.update(refs[start:start + chunk], labels[start:start + chunk])
    return knn


@pytest.fixture(scope="module")
def digit_embeddings():
    from sklearn.datasets import load_digits

    from smt import SMT
    digits = load_digits()
    x, y = digits.images.astype(np.float32) / 16.0, digits.target
    z = SMT(patch_size=3, n_atoms=64, n_components=16, context=1, pool_size=3, pool_stride=1,
            random_state=0).fit_transform(x[:1200])
    return z, y[:1200]


@pytest.mark.parametrize("compiled", [True, False])
def test_bf16_screen_gives_the_float32_neighbours_on_real_embeddings(digit_embeddings, compiled, monkeypatch):
    import smt.knn as knn_module
    if not compiled:
        monkeypatch.setattr(knn_module, "pair_dots", None)
    elif knn_module.pair_dots is None:
        pytest.skip("numba is not installed")
    z, y = digit_embeddings
    queries, refs, labels = z[:200], z[200:], y[200:]
    f32 = _streamed(queries, refs, labels, "float32", chunk=100)
    bf16 = _streamed(queries, refs, labels, "bf16", chunk=100)
    s32, l32, i32 = f32.neighbors()
    s16, l16, i16 = bf16.neighbors()
    assert torch.equal(i32, i16) and torch.equal(l32, l16)
    torch.testing.assert_close(s16, s32, rtol=0, atol=1e-6)
    assert torch.equal(f32.predict(), bf16.predict())
    assert f32.accuracy(y[:200]) == bf16.accuracy(y[:200])
    # the screen sends back only a small part of the float32 work after the first chunk
    screened = bf16.n_queries * (bf16.n_references - 100)
    assert 0 < bf16.n_rescored < 0.2 * screened
    assert f32.n_rescored == 0


def test_bf16_screen_is_exact_when_every_reference_is_within_its_error():
    # 400 references around one direction, whose similarities to the queries differ by 1e-5 to
    # 1e-3: far above float32's rounding, far below bf16's.  The screen cannot order them, so it
    # must send them all back and the neighbours are the exact ones.
    rng = np.random.default_rng(0)
    u, v = np.linalg.qr(rng.normal(size=(64, 2)))[0].T
    steps = rng.permutation(300)  # the order of similarity is not the order of the stream
    refs = u + (0.01 + 4e-5 * steps)[:, None] * v + 1e-7 * rng.normal(size=(300, 64))
    refs = np.concatenate([refs, refs[:100]]).astype(np.float32)  # duplicates: ties, lower index first
    labels = rng.integers(0, 3, 400)
    queries = (u - rng.uniform(0.3, 0.6, size=(20, 1)) * v).astype(np.float32)
    exact = (torch.nn.functional.normalize(torch.tensor(queries, dtype=torch.float64), dim=1)
             @ torch.nn.functional.normalize(torch.tensor(refs, dtype=torch.float64), dim=1).T)
    top = torch.sort(exact[:, :300], dim=1, descending=True).values
    assert float((top[:, :10] - top[:, 1:11]).min()) > 1e-6  # the order is well defined
    f32 = _streamed(queries, refs, labels, "float32", chunk=50, k=10)
    bf16 = _streamed(queries, refs, labels, "bf16", chunk=50, k=10)
    assert torch.equal(f32.neighbors()[2], bf16.neighbors()[2])
    # each duplicate comes right after its original
    for row in bf16.neighbors()[2].tolist():
        for pos, j in enumerate(row):
            if j >= 300:
                assert pos > 0 and row[pos - 1] == j - 300
    assert torch.equal(f32.predict(), bf16.predict())
    assert bf16.n_rescored > 0.5 * 20 * 350


def test_bf16_screen_error_bound_holds():
    from smt.knn import _BF16_OUTPUT_ERROR, _bf16_rows
    rng = np.random.default_rng(1)
    q = torch.nn.functional.normalize(torch.tensor(rng.standard_t(2, size=(50, 300)), dtype=torch.float32), dim=1)
    r = torch.nn.functional.normalize(torch.tensor(rng.standard_t(2, size=(70, 300)), dtype=torch.float32), dim=1)
    qb, qn, qe = _bf16_rows(q)
    rb, rn, re = _bf16_rows(r, bias_column=True)
    assert qb.shape[1] % 64 == 0 and bool((rb[:, 300] == 1).all()) and bool((qb[:, 300:] == 0).all())
    exact = q.double() @ r.double().T
    screen = (qb @ rb.T).double() - 1.0  # the bias column adds 1 to every output
    bound = qe[:, None].double() + qn[:, None].double() * re[None, :].double() + _BF16_OUTPUT_ERROR * (screen + 1).abs()
    assert bool(((exact - (screen + 1)).abs() <= bound + 1e-6).all())


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        StreamingKNN(np.ones((2, 3)), precision="float16")
    with pytest.raises(ValueError, match="precision"):
        knn_accuracy(np.ones((4, 3)), [0, 1, 0, 1], np.ones((2, 3)), [0, 1], precision="int8", device="cpu")


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_copy_false_normalises_in_place_with_the_same_neighbours(precision):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(300, 50)).astype(np.float32)
    refs = 3 * rng.normal(size=(2000, 50)).astype(np.float32)
    labels = rng.integers(0, 5, 2000)
    expected = _stream(StreamingKNN(queries, k=10, device="cpu", precision=precision), refs, labels, 500)
    q, r = queries.copy(), refs.copy()
    knn = _stream(StreamingKNN(q, k=10, device="cpu", precision=precision, copy=False), r, labels, 500)
    for a, b in zip(expected.neighbors(), knn.neighbors()):
        assert torch.equal(a, b)
    # the caller's float32 arrays now hold the unit rows the kNN compared
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(r, refs / np.linalg.norm(refs, axis=1, keepdims=True), rtol=1e-6)
    # other dtypes cannot be normalised in place: they are cast into a copy, the input kept
    q64 = queries.astype(np.float64)
    StreamingKNN(q64, k=10, device="cpu", copy=False)
    np.testing.assert_array_equal(q64, queries.astype(np.float64))
    with pytest.raises(ValueError, match="copy"):
        StreamingKNN(queries, copy="no")


def test_the_bf16_knn_holds_its_queries_once():
    """The screen rounds each query batch to bfloat16 when it compares it: beside the float32 unit
    queries the kNN keeps two floats per query and its top-k, no bf16 copy of every query (1.1 GB
    for CIFAR-10's 10,000 test images at d 384)."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(3000, 200)).astype(np.float32)
    refs, labels = rng.normal(size=(1500, 200)).astype(np.float32), rng.integers(0, 3, 1500)
    knn = _stream(StreamingKNN(queries.copy(), k=10, device="cpu", precision="bf16", copy=False), refs, labels, 500)
    held = sum(t.untyped_storage().nbytes() for t in vars(knn).values() if isinstance(t, torch.Tensor))
    top_k = 2 * 3000 * 10 * 8  # keys and labels, int64
    assert held <= queries.nbytes + top_k + 2 * 3000 * 4 + 1024
    assert knn.n_rescored > 0  # the second and third chunks were screened
    expected = _stream(StreamingKNN(queries, k=10, device="cpu"), refs, labels, 500)
    assert torch.equal(expected.neighbors()[2], knn.neighbors()[2])


def test_nan_in_any_block_of_rows_is_found(monkeypatch):
    import smt._validation
    monkeypatch.setattr(smt._validation, "_FINITE_BLOCK", 8)  # 2 rows of 4 features per block
    q = np.ones((7, 4), dtype=np.float32)
    q[6, 3] = np.nan
    with pytest.raises(ValueError, match="queries contains NaN"):
        StreamingKNN(q, device="cpu")
    knn = StreamingKNN(np.ones((3, 4)), device="cpu")
    with pytest.raises(ValueError, match="reference_chunk holds finite values beyond float32"):
        knn.update(np.vstack([np.ones((4, 4)), [[1e39, 0, 0, 0]]]), np.zeros(5, dtype=int))


# --------------------------------------------------------------------------- #
# Hubness reduction: ReferenceDensity and update(..., penalty=)
# --------------------------------------------------------------------------- #
def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_reference_density_is_the_mean_of_each_references_k_best_probe_cosines():
    rng = np.random.default_rng(0)
    probes, refs = rng.normal(size=(40, 8)), rng.normal(size=(25, 8)) * 3.0
    cos = _unit(probes) @ _unit(refs).T
    exclude = rng.random(cos.shape) < 0.3
    expected = np.sort(np.where(exclude, -np.inf, cos), axis=0)[::-1][:5].mean(0)
    density = ReferenceDensity(probes, k=5, device="cpu")
    np.testing.assert_allclose(density(refs, exclude).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(density(refs).numpy(), np.sort(cos, axis=0)[::-1][:5].mean(0), atol=1e-6)
    # k beyond the probes: the mean of all of them; bf16 within its rounding
    np.testing.assert_allclose(ReferenceDensity(probes, k=99, device="cpu")(refs).numpy(), cos.mean(0), atol=1e-6)
    bf16 = ReferenceDensity(torch.as_tensor(probes), k=5, precision="bf16", device="cpu")
    np.testing.assert_allclose(bf16(refs).numpy(), np.sort(cos, axis=0)[::-1][:5].mean(0), atol=1e-2)


def test_reference_density_refuses_bad_input_by_name():
    density = ReferenceDensity(np.eye(3), k=2, device="cpu")
    with pytest.raises(ValueError, match="references have 2 features but the probes have 3"):
        density(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"exclude must be a boolean array of shape \(3, 4\)"):
        density(np.ones((4, 3)), exclude=np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match="a reference has no probe left after exclude"):
        density(np.ones((2, 3)), exclude=np.array([[True, False], [True, True], [True, False]]))
    # fewer than k left: the mean of those left
    assert density(np.eye(3)[:1], exclude=np.array([[True], [True], [False]])).tolist() == [0.0]
    with pytest.raises(ValueError, match="probes is empty"):
        ReferenceDensity(np.ones((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        ReferenceDensity(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="k"):
        ReferenceDensity(np.eye(3), k=0)
    with pytest.raises(ValueError, match="k must be an int"):
        ReferenceDensity(np.eye(3), k="3")
    with pytest.raises(ValueError, match="precision must be a str among"):
        ReferenceDensity(np.eye(3), precision="fp8")
    with pytest.raises(TypeError, match="probes: expected a numeric array"):
        ReferenceDensity([["a", "b"]])


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_penalty_ranks_and_votes_by_the_penalised_similarity(digit_embeddings, precision):
    """Streamed in chunks (so the bf16 screen runs), the neighbours are the brute-force top-k of
    s - p, and the votes use s - p."""
    z, y = digit_embeddings
    queries, refs, labels = z[:200], z[200:], y[200:]
    penalty = np.random.default_rng(0).uniform(0.0, 0.3, len(refs)).astype(np.float32)
    knn = StreamingKNN(queries, k=10, device="cpu", precision=precision)
    for start in range(0, len(refs), 100):
        knn.update(refs[start:start + 100], labels[start:start + 100], penalty[start:start + 100])
    scores = _unit(queries.astype(np.float64)) @ _unit(refs.astype(np.float64)).T - penalty
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    sims, nb_labels, idx = knn.neighbors()
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_allclose(sims.numpy(), np.take_along_axis(scores, order, 1), atol=1e-6)
    np.testing.assert_array_equal(nb_labels.numpy(), labels[order])
    # the penalty changes the neighbours of this data: it is not ignored
    plain = _streamed(queries, refs, labels, precision, chunk=100, k=10)
    assert not torch.equal(plain.neighbors()[2], idx)


def test_penalty_by_hand_turns_the_vote():
    """Query along +x: without a penalty the 0-degree reference (class 0) wins; a penalty of 0.5
    on it leaves the 30-degree one (class 1, cosine 0.87) ahead."""
    knn = StreamingKNN(QUERY, k=1, device="cpu")
    knn.update(REFS[:2], REF_LABELS[:2], penalty=np.array([0.5, 0.0]))
    assert knn.predict().tolist() == [1]
    assert knn.neighbors()[0].item() == pytest.approx(math.sqrt(3) / 2, abs=1e-6)
    plain = StreamingKNN(QUERY, k=1, device="cpu")
    plain.update(REFS[:2], REF_LABELS[:2])
    assert plain.predict().tolist() == [0]


def test_penalty_of_the_wrong_shape_or_with_nan_is_refused():
    knn = StreamingKNN(QUERY, k=1, device="cpu")
    with pytest.raises(ValueError, match="penalty has 3 values for 2 references"):
        knn.update(REFS[:2], REF_LABELS[:2], penalty=np.zeros(3))
    with pytest.raises(ValueError, match="penalty must be 1-D"):
        knn.update(REFS[:2], REF_LABELS[:2], penalty=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="NaN"):
        knn.update(REFS[:2], REF_LABELS[:2], penalty=np.array([0.0, np.nan]))
    with pytest.raises(TypeError, match="penalty: expected a numeric array, got dtype <U"):
        knn.update(REFS[:2], REF_LABELS[:2], penalty=["a", "b"])
    assert knn.n_references == 0


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_sharing_queries_gives_an_independent_knn_over_the_same_unit_queries(digit_embeddings, precision):
    """A kNN from sharing_queries holds no second copy of the queries, starts empty, and streams to
    the same neighbours as a kNN built from the queries; the first kNN is left as it was."""
    z, y = digit_embeddings
    queries, refs, labels = z[:200], z[200:], y[200:]
    penalty = np.random.default_rng(1).uniform(0.0, 0.3, len(refs)).astype(np.float32)
    first = _streamed(queries, refs[:300], labels[:300], precision, chunk=100, k=10)
    before = first.neighbors()
    twin = first.sharing_queries(k=7, temperature=0.1)
    assert twin._queries is first._queries
    assert (twin.k, twin.temperature, twin.n_references, twin.precision) == (7, 0.1, 0, precision)
    with pytest.raises(ValueError, match="reference set is empty"):
        twin.predict()
    alone = StreamingKNN(queries, k=7, temperature=0.1, device="cpu", precision=precision)
    for knn in (twin, alone):
        for start in range(0, len(refs), 100):
            knn.update(refs[start:start + 100], labels[start:start + 100], penalty[start:start + 100])
    assert all(torch.equal(a, b) for a, b in zip(twin.neighbors(), alone.neighbors()))
    assert torch.equal(twin.predict(), alone.predict())
    assert first.n_references == 300 and all(torch.equal(a, b) for a, b in zip(first.neighbors(), before))
    assert first.sharing_queries().k == 10
    with pytest.raises(ValueError, match="k"):
        first.sharing_queries(k=0)
    with pytest.raises(ValueError, match="temperature"):
        first.sharing_queries(temperature=-1.0)
    with pytest.raises((TypeError, ValueError), match="k"):
        first.sharing_queries(k="7")


def test_knn_accuracy_with_a_penalty_is_the_penalised_streaming_knn(digit_embeddings):
    """knn_accuracy(..., penalty=) scores the kNN of s - p, from an array or from (chunk, labels,
    penalty) triples, and the hubness-reduced kNN of ReferenceDensity differs from the plain one."""
    z, y = digit_embeddings
    queries, q_labels, refs, labels = z[:200], y[:200], z[200:], y[200:]
    penalty = 0.75 * ReferenceDensity(z[200:300], device="cpu")(refs).numpy()
    knn = StreamingKNN(queries, device="cpu")
    knn.update(refs, labels, penalty)
    expected = knn.accuracy(q_labels)
    assert knn_accuracy(refs, labels, queries, q_labels, device="cpu", batch_size=128, penalty=penalty) == expected
    triples = ((refs[s:s + 100], labels[s:s + 100], penalty[s:s + 100]) for s in range(0, len(refs), 100))
    assert knn_accuracy(triples, None, queries, q_labels, device="cpu") == expected
    assert knn_accuracy(refs, labels, queries, q_labels, device="cpu", penalty=np.zeros(len(refs))) == \
        knn_accuracy(refs, labels, queries, q_labels, device="cpu")
    with pytest.raises(ValueError, match=rf"penalty must have shape \({len(refs)},\)"):
        knn_accuracy(refs, labels, queries, q_labels, device="cpu", penalty=penalty[:-1])
    with pytest.raises(TypeError, match="penalty: expected a numeric array"):
        knn_accuracy(refs, labels, queries, q_labels, device="cpu", penalty=["x"] * len(refs))
    with pytest.raises(ValueError, match="penalty is for an array train"):
        knn_accuracy(iter([(refs, labels)]), None, queries, q_labels, device="cpu", penalty=penalty)
    with pytest.raises(TypeError, match="or an \\(embeddings_chunk, labels_chunk, penalty_chunk\\) triple"):
        knn_accuracy(iter([(refs, labels, penalty, penalty)]), None, queries, q_labels, device="cpu")
