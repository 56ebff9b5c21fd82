"""SMTWordEmbedding and its window co-occurrence statistics (spec 8)."""
import itertools

import numpy as np
import pytest
import scipy.sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import smt.cooccurrence
from smt.cooccurrence import WindowCooccurrence
from smt.word_embedding import SMTWordEmbedding

from conftest import SHARED_DATA


def _brute_force(lines, words, window, weighting):
    pos = {w: i for i, w in enumerate(words)}
    c, f = np.zeros((len(words), len(words))), np.zeros(len(words))
    for line in lines:
        for p, a in enumerate(line):
            if a in pos:
                f[pos[a]] += 1
            for q, b in enumerate(line):
                if 0 < abs(p - q) <= window and a in pos and b in pos:
                    c[pos[a], pos[b]] += 1 if weighting == "uniform" else 1 / abs(p - q)
    return f, c


@pytest.mark.parametrize("weighting", ["uniform", "inverse_distance"])
def test_cooccurrence_matches_brute_force_across_chunks(monkeypatch, weighting):
    # Tiny chunks and blocks force many flushes, merges into the sorted table and block splits.
    monkeypatch.setattr(smt.cooccurrence, "_CHUNK_TOKENS", 7)
    monkeypatch.setattr(smt.cooccurrence, "_BLOCK", 5)
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(12)]
    lines = [[vocab[j] for j in rng.integers(0, 12, rng.integers(0, 15))] for _ in range(80)]
    stats = WindowCooccurrence(window=3, weighting=weighting)
    for line in lines:
        stats.add(line)
    kept = vocab[3:11]  # words outside the kept set still take window positions
    assert len(stats._table.blocks) > 3
    words, f, upper = stats.restrict(kept[::-1])
    assert words == sorted(kept, key=stats.index_.get)  # rows in order of first sight
    assert scipy.sparse.triu(upper).nnz == upper.nnz
    f_ref, c_ref = _brute_force(lines, words, 3, weighting)
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_allclose((upper + upper.T).toarray(), c_ref, rtol=1e-6)
    assert stats.n_tokens_ == sum(map(len, lines)) and stats.n_lines_ == 80


def _topic_corpus(n_lines=400, seed=0):
    """Lines drawn from one of two disjoint word sets, plus shared function words."""
    rng = np.random.default_rng(seed)
    topics = [[f"a{i}" for i in range(15)], [f"b{i}" for i in range(15)]]
    shared = ["the", "of", "and"]
    lines = []
    for _ in range(n_lines):
        words = topics[rng.integers(2)] + shared
        lines.append(" ".join(rng.choice(words, size=rng.integers(5, 20))))
    return lines


def test_slowest_direction_separates_the_topics():
    # The first direction after the constant one is the Fiedler vector of the co-occurrence graph:
    # it takes one sign on each topic's words.
    model = SMTWordEmbedding(n_components=1, tokenizer="whitespace", random_state=0).fit(_topic_corpus())
    a = model.transform([f"a{i}" for i in range(15)])[:, 0]
    b = model.transform([f"b{i}" for i in range(15)])[:, 0]
    assert (np.all(a > 0) and np.all(b < 0)) or (np.all(a < 0) and np.all(b > 0))
    neighbours = [w for w, _ in SMTWordEmbedding(n_components=2, tokenizer="whitespace", random_state=0)
                  .fit(_topic_corpus()).most_similar("a0", topn=5)]
    assert all(w.startswith("a") for w in neighbours), neighbours


def test_dense_and_sparse_solvers_agree():
    lines = _topic_corpus(300, seed=1)
    params = dict(n_components=6, tokenizer="whitespace", window=3, random_state=0)
    dense = SMTWordEmbedding(solver="dense", **params).fit(lines)
    sparse = SMTWordEmbedding(solver="sparse", **params).fit(lines)
    assert dense.vocabulary_ == sparse.vocabulary_
    np.testing.assert_allclose(dense.eigenvalues_, sparse.eigenvalues_, rtol=1e-4, atol=1e-8)
    # Compare through the cosine matrices: invariant to rotations within repeated eigenvalues.
    np.testing.assert_allclose(dense.embedding_ @ dense.embedding_.T, sparse.embedding_ @ sparse.embedding_.T,
                               atol=2e-3)


def test_constant_direction_is_skipped_and_vectors_have_unit_norm():
    model = SMTWordEmbedding(n_components=5, tokenizer="whitespace", n_skip=0, solver="sparse",
                             random_state=0).fit(_topic_corpus())
    assert model.eigenvalues_[0] == pytest.approx(0, abs=1e-8)  # (Deg - C) 1 = 0 exactly
    assert np.all(np.diff(model.eigenvalues_) >= -1e-10)
    np.testing.assert_allclose(np.linalg.norm(model.embedding_, axis=1), 1, rtol=1e-5)
    assert model.transform(["a1", "b1", "the"]).shape == (3, 5)
    assert model.transform("a1").shape == (5,)


def test_same_seed_same_embedding_and_generator_input():
    lines = _topic_corpus()
    a = SMTWordEmbedding(n_components=4, tokenizer="whitespace", solver="sparse", random_state=3).fit(lines)
    b = SMTWordEmbedding(n_components=4, tokenizer="whitespace", solver="sparse", random_state=3).fit(
        line.split() for line in lines)  # one pass over a generator of token lists
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    assert clone(a).get_params() == a.get_params()


def test_save_load_round_trip(tmp_path):
    model = SMTWordEmbedding(n_components=4, tokenizer="whitespace", random_state=0).fit(_topic_corpus())
    model.save(tmp_path / "words.npz")
    loaded = SMTWordEmbedding.load(tmp_path / "words.npz")
    assert loaded.vocabulary_ == model.vocabulary_
    np.testing.assert_array_equal(loaded.transform(["a1", "b2"]), model.transform(["a1", "b2"]))
    assert loaded.most_similar("a3", 5) == model.most_similar("a3", 5)
    assert loaded.get_params() == {**model.get_params(), "specials": ["<unk>"]}


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="no tokens"):
        SMTWordEmbedding().fit(["", "   "])
    with pytest.raises(ValueError, match="no tokens"):
        SMTWordEmbedding().fit([])
    with pytest.raises(TypeError, match="single string"):
        SMTWordEmbedding().fit("the cat sat")
    with pytest.raises(TypeError, match="line 1"):
        SMTWordEmbedding().fit(["the cat", 3])
    with pytest.raises(ValueError, match=r"n_components \+ n_skip = 301.*10 \(10 in the vocabulary"):
        SMTWordEmbedding().fit(["one two three four five six seven eight nine ten"] * 3)
    with pytest.raises(ValueError, match="window"):
        SMTWordEmbedding(window=0).fit(["a b"])
    with pytest.raises(ValueError, match="solver"):
        SMTWordEmbedding(solver="lapack").fit(["a b"])
    with pytest.raises(NotFittedError):
        SMTWordEmbedding().transform(["a"])
    model = SMTWordEmbedding(n_components=4, tokenizer="whitespace", random_state=0).fit(_topic_corpus())
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        model.transform(["a1", "zebra"])
    with pytest.raises(KeyError, match="'zebra'"):
        model.similarity("zebra", "a1")
    with pytest.raises(KeyError, match="'zebra'"):
        model.most_similar("zebra")


def test_special_tokens_and_rare_words_are_not_embedded():
    lines = [line + " <unk> rare" * (i == 0) for i, line in enumerate(_topic_corpus())]
    model = SMTWordEmbedding(n_components=4, tokenizer="whitespace", min_count=2, random_state=0).fit(lines)
    assert "<unk>" not in model.vocabulary_ and "rare" not in model.vocabulary_
    assert model.n_tokens_ == sum(len(line.split()) for line in lines)


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").is_dir(), reason="WikiText-2 not in ../shared/data")
def test_wikitext2_number_words_are_neighbours():
    from smt.datasets import clean_wikitext_line, load_wikitext

    lines = itertools.chain(*(map(clean_wikitext_line, load_wikitext("wikitext-2", split, root=SHARED_DATA))
                              for split in ("valid", "test")))
    model = SMTWordEmbedding(n_components=100, min_count=5, random_state=0).fit(lines)
    numbers = {"one", "two", "four", "five", "six", "seven", "eight", "nine", "ten"}
    neighbours = {w for w, _ in model.most_similar("three", topn=10)}
    assert len(neighbours & numbers) >= 4, neighbours
