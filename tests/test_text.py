"""Tests for smt.text: the basic_english tokenizer and the Vocabulary."""

import numpy as np
import pytest

from smt.text import Vocabulary, basic_english_tokenize


@pytest.mark.parametrize("line, expected", [
    ('Hello, World! It\'s 3.5 "apples" (fresh);<br />ok?',
     "hello , world ! it ' s 3 . 5 apples ( fresh ) ok ?"),
    ("Don't stop", "don ' t stop"),
    ("'quoted'", "' quoted '"),
    ("1,000.50 and 42", "1 , 000 . 50 and 42"),
    ("  many   spaces\tand\ttabs \n", "many spaces and tabs"),
    ("", ""),
    ("   ", ""),
    ("A:B;C<BR />D", "a b c d"),
    ('say "hi"!?', "say hi ! ?"),
    ('<br "/>x', "x"),  # '"' is deleted before '<br />' is replaced, as in torchtext
    ("e-mail @ home/work", "e-mail @ home/work"),
])
def test_basic_english(line, expected):
    assert basic_english_tokenize(line) == expected.split()


def test_basic_english_rejects_non_str():
    with pytest.raises(TypeError, match="str"):
        basic_english_tokenize(["a", "b"])


CORPUS = [
    ["b", "a", "c", "<unk>"],
    ["a", "b", "d"],
    [],
    ["c", "a", "<unk>", "e"],
]  # counts: a 3, b 2, c 2, d 1, e 1; <unk> 2


def test_vocabulary_ranking_and_ties():
    v = Vocabulary().fit(CORPUS)
    assert v.tokens_ == ["a", "b", "c", "d", "e"]  # ties (b/c, d/e) by token string
    assert v.counts_.dtype == np.int64
    assert v.counts_.tolist() == [3, 2, 2, 1, 1]
    assert v.index_ == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    assert len(v) == 5 and "a" in v and "z" not in v
    assert v.special_counts_ == {"<unk>": 2}
    assert "<unk>" not in v
    assert (v.n_tokens_, v.n_types_, v.n_lines_) == (9, 5, 4)
    # deterministic: corpus order does not matter
    v2 = Vocabulary().fit(reversed([list(reversed(t)) for t in CORPUS]))
    assert v2.tokens_ == v.tokens_


def test_vocabulary_min_count_max_size():
    assert Vocabulary(min_count=2).fit(CORPUS).tokens_ == ["a", "b", "c"]
    assert Vocabulary(max_size=2).fit(CORPUS).tokens_ == ["a", "b"]
    assert Vocabulary(min_count=2, max_size=10).fit(CORPUS).tokens_ == ["a", "b", "c"]
    assert Vocabulary(min_count=4).fit(CORPUS).tokens_ == []
    assert Vocabulary(min_count=4).fit(CORPUS).counts_.shape == (0,)


def test_vocabulary_streams_a_generator():
    v = Vocabulary(specials=("<unk>", "<eos>")).fit(line.split() for line in ["x y <eos>", "y <eos>"])
    assert v.tokens_ == ["y", "x"]
    assert v.special_counts_ == {"<unk>": 0, "<eos>": 2}


def test_vocabulary_lookup_keyerror_names_word():
    v = Vocabulary().fit(CORPUS)
    assert v.lookup("c") == 2
    with pytest.raises(KeyError, match="'zebra'"):
        v.lookup("zebra")
    with pytest.raises(KeyError, match="'<unk>'.*special"):
        v.lookup("<unk>")


@pytest.mark.parametrize("kw", [dict(min_count=0), dict(max_size=0), dict(min_count=1.5),
                                dict(max_size=True), dict(specials=(1,))])
def test_vocabulary_bad_params(kw):
    with pytest.raises(ValueError):
        Vocabulary(**kw).fit(CORPUS)


def test_vocabulary_rejects_strings_and_unfitted():
    with pytest.raises(TypeError, match="lists of tokens"):
        Vocabulary().fit(["a b c"])
    with pytest.raises(AttributeError, match="not fitted"):
        len(Vocabulary())
