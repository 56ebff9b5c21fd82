"""Tests for the text data loaders: WikiText and the word-similarity benchmarks."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from smt.datasets import (clean_wikitext_line, evaluate_similarity, load_men, load_rw, load_simlex999,
                          load_wikitext, load_wordsim353)
from smt.datasets import wikitext, word_similarity
from smt.datasets._base import DownloadError, md5sum

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# ---------------------------------------------------------------- WikiText

WIKI_TEXT = (
    " \n"
    " = Valkyria Chronicles III = \n"
    " \n"
    " Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a 2011 game . \n"
    " The game 's 1 @,@ 000 players \u2028 liked it . \n"
    " \n"
    " = = Gameplay = = \n"
    " \n"
)


@pytest.fixture
def no_hf(monkeypatch):
    """Make `import datasets` fail, so nothing tries to reach Hugging Face."""
    monkeypatch.setitem(sys.modules, "datasets", None)


def write_wiki(folder: Path, split="train"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"wiki.{split}.tokens"
    path.write_bytes(WIKI_TEXT.encode("utf-8"))
    return path


def test_load_wikitext_streams_lines(tmp_path, no_hf):
    write_wiki(tmp_path / "wikitext-103", "train")
    lines = load_wikitext("wikitext-103", "train", root=tmp_path)
    assert iter(lines) is lines  # a generator, not a list
    got = list(lines)
    assert got == WIKI_TEXT.split("\n")[:-1]  # only LF ends a line (not U+2028); line ends removed
    assert got[1] == " = Valkyria Chronicles III = "


def test_load_wikitext_env_and_flat_root(tmp_path, monkeypatch, no_hf):
    write_wiki(tmp_path / "data" / "wikitext-2", "train")
    monkeypatch.setenv("SMT_DATA", str(tmp_path / "data"))
    assert len(list(load_wikitext("wikitext-2", "train"))) == 8
    write_wiki(tmp_path / "flat", "valid")
    monkeypatch.setitem(wikitext.WIKITEXT_MD5S, ("wikitext-2", "wiki.valid.tokens"), ())
    assert len(list(load_wikitext("wikitext-2", "valid", root=tmp_path / "flat"))) == 8


def test_load_wikitext_md5_of_known_files(tmp_path, no_hf):
    write_wiki(tmp_path / "wikitext-2", "valid")  # not the official bytes
    with pytest.raises(ValueError, match="md5 mismatch"):
        load_wikitext("wikitext-2", "valid", root=tmp_path)


def test_load_wikitext_missing(tmp_path, no_hf):
    with pytest.raises(DownloadError) as e:  # raised at the call, not at the first next()
        load_wikitext("wikitext-103", "valid", root=tmp_path)
    msg = str(e.value)
    assert "wiki.valid.tokens" in msg and str(tmp_path / "wikitext-103") in msg
    assert "sparse-manifold-transform[data]" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_load_wikitext_download_failure(tmp_path, monkeypatch):
    class FakeDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            raise ConnectionError("offline")
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    with pytest.raises(DownloadError, match="offline"):
        load_wikitext("wikitext-2", "train", root=tmp_path)


def test_load_wikitext_from_hf(tmp_path, monkeypatch):
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            calls.append((args, kwargs))
            return [{"text": ""}, {"text": " = T = \n"}, {"text": " a b \n"}]
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    assert list(load_wikitext("wikitext-2", "valid", root=tmp_path)) == [" ", " = T = ", " a b "]
    assert calls == [(("Salesforce/wikitext", "wikitext-2-v1"), {"split": "validation"})]


@pytest.mark.parametrize("kw", [dict(name="wikitext-3"), dict(split="validation")])
def test_load_wikitext_bad_args(tmp_path, kw):
    with pytest.raises(ValueError, match="unknown WikiText"):
        load_wikitext(root=tmp_path, **kw)


def test_clean_wikitext_line():
    assert clean_wikitext_line(" = Valkyria Chronicles III = ") == []
    assert clean_wikitext_line(" = = = Sub = = = ") == []
    assert clean_wikitext_line(" ") == [] and clean_wikitext_line("") == []
    assert clean_wikitext_line(" The <unk> Game 's 1 @,@ 000 = x . ") == \
        ["the", "game", "'s", "1", "@,@", "000", "=", "x", "."]
    assert clean_wikitext_line("<UNK> <unk>") == ["<unk>"]  # only the exact <unk> token is dropped
    cleaned = [t for t in map(clean_wikitext_line, WIKI_TEXT.split("\n")) if t]
    assert len(cleaned) == 2 and "<unk>" not in cleaned[0] and cleaned[0][0] == "senjō"


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").is_dir(), reason="no shared WikiText-2 copy")
def test_wikitext2_shared_copy():
    for split, n_tokens in (("valid", 217_646), ("test", 245_569)):
        lines = list(load_wikitext("wikitext-2", split, root=SHARED_DATA))
        # published count: whitespace split plus one <eos> per line
        assert sum(len(line.split()) + 1 for line in lines) == n_tokens


# ----------------------------------------------------- word similarity

SMALL = {
    "wordsim353": b"Word 1,Word 2,Human (mean)\r\nlove,sex,6.77\r\nTiger,cat,7.35\r\nmoney,cash,9.15\r\n",
    "simlex999": (b"word1\tword2\tPOS\tSimLex999\tconc(w1)\tconc(w2)\tconcQ\tAssoc(USF)\tSimAssoc333\tSD(SimLex)\r\n"
                  b"old\tnew\tA\t1.58\t2.72\t2.81\t2\t7.25\t1\t0.41\r\n"
                  b"smart\tintelligent\tA\t9.2\t1.75\t2.46\t1\t7.11\t1\t0.67\r\n"
                  b"hard\tdifficult\tA\t8.77\t3.76\t2.21\t2\t5.94\t1\t1.19\r\n"),
    "men": b"sun sunlight 50.000000\nautomobile car 50.000000\nriver water 49.000000\n",
    "rw": (b"squishing\tsquirt\t5.88\t7\t7\t6\t1\t4\t6\t6\t7\t2\t4\n"
           b"undated\tundatable\t5.83\t10\t9\t6\t5\t5\t7\t7\t9\t2\t5\n"
           b"circumvents\tbeat\t5.33\t7\t9\t2\t4\t7\t6\n"),
}
EXPECTED = {
    "wordsim353": ([("love", "sex"), ("tiger", "cat"), ("money", "cash")], [6.77, 7.35, 9.15]),
    "simlex999": ([("old", "new"), ("smart", "intelligent"), ("hard", "difficult")], [1.58, 9.2, 8.77]),
    "men": ([("sun", "sunlight"), ("automobile", "car"), ("river", "water")], [50.0, 50.0, 49.0]),
    "rw": ([("squishing", "squirt"), ("undated", "undatable"), ("circumvents", "beat")], [5.88, 5.83, 5.33]),
}
LOADERS = {"wordsim353": load_wordsim353, "simlex999": load_simlex999, "men": load_men, "rw": load_rw}
FULL_COUNTS = {"wordsim353": 353, "simlex999": 999, "men": 3000, "rw": 2034}


def write_small(folder: Path, key: str, monkeypatch, content: bytes | None = None):
    """Write a small file in the real format and make the loader accept its md5."""
    relpath = word_similarity.WORD_SIMILARITY_FILES[key][0]
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SMALL[key] if content is None else content)
    spec = word_similarity.WORD_SIMILARITY_FILES[key]
    monkeypatch.setitem(word_similarity.WORD_SIMILARITY_FILES, key, (spec[0], (md5sum(path),)) + spec[2:])
    return path


@pytest.mark.parametrize("key", list(LOADERS))
def test_small_word_similarity_files(tmp_path, monkeypatch, key):
    write_small(tmp_path / "word-similarity", key, monkeypatch)
    pairs, scores = LOADERS[key](root=tmp_path)
    assert pairs == EXPECTED[key][0]
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, EXPECTED[key][1])
    # the word-similarity folder itself as root, and $SMT_DATA
    assert LOADERS[key](root=tmp_path / "word-similarity")[0] == pairs
    monkeypatch.setenv("SMT_DATA", str(tmp_path))
    assert LOADERS[key]()[0] == pairs


@pytest.mark.parametrize("key", list(LOADERS))
def test_word_similarity_md5_and_missing(tmp_path, monkeypatch, key):
    relpath = word_similarity.WORD_SIMILARITY_FILES[key][0]
    with pytest.raises(FileNotFoundError, match=Path(relpath).name):
        LOADERS[key](root=tmp_path)
    path = tmp_path / "word-similarity" / relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(SMALL[key])  # not the official file
    with pytest.raises(ValueError, match="md5 mismatch"):
        LOADERS[key](root=tmp_path)


def test_word_similarity_bad_line(tmp_path, monkeypatch):
    write_small(tmp_path, "men", monkeypatch, content=b"sun sunlight 50.0\nbroken line\n")
    with pytest.raises(ValueError, match="line 2"):
        load_men(root=tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "word-similarity").is_dir(), reason="no shared word-similarity copy")
@pytest.mark.parametrize("key", list(LOADERS))
def test_full_word_similarity_files(key):
    pairs, scores = LOADERS[key](root=SHARED_DATA)
    assert len(pairs) == len(scores) == FULL_COUNTS[key]
    assert all(a == a.lower() and b == b.lower() and a and b for a, b in pairs)
    assert np.isfinite(scores).all() and scores.min() >= 0
    assert scores.max() <= (50 if key == "men" else 10)


# ------------------------------------------------- evaluate_similarity

def test_evaluate_similarity_monotone_and_coverage():
    pairs = [("a", "b"), ("c", "d"), ("e", "f"), ("g", "oov"), ("h", "i")]
    scores = [1.0, 2.0, 3.0, 4.0, 5.0]
    table = {("a", "b"): 0.1, ("c", "d"): 0.2, ("e", "f"): 0.5, ("h", "i"): 0.9}

    def sim(a, b):
        if b == "oov":
            raise KeyError(b)
        return table[(a, b)]

    res = evaluate_similarity(sim, pairs, scores)
    assert res["spearman"] == pytest.approx(1.0)
    assert res["coverage"] == pytest.approx(0.8)
    assert (res["n_pairs"], res["n_covered"]) == (5, 4)
    res = evaluate_similarity(lambda a, b: -table[(a, b)], pairs, scores)
    assert res["spearman"] == pytest.approx(-1.0)


def test_evaluate_similarity_known_rho():
    # ranks of x: 1 2 3 4 5, of y: 2 1 4 3 5 -> d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    pairs = [(str(i), str(i)) for i in range(5)]
    pred = {"0": 2.0, "1": 1.0, "2": 4.0, "3": 3.0, "4": 5.0}
    res = evaluate_similarity(lambda a, b: pred[a], pairs, np.arange(5.0))
    assert res["spearman"] == pytest.approx(0.8)


def test_evaluate_similarity_edge_cases():
    def never(a, b):
        raise KeyError(a)
    res = evaluate_similarity(never, [("a", "b"), ("c", "d")], [1.0, 2.0])
    assert math.isnan(res["spearman"]) and res["coverage"] == 0.0 and res["n_covered"] == 0
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_similarity(never, [("a", "b")], [1.0, 2.0])
    with pytest.raises(ValueError, match="no pairs"):
        evaluate_similarity(never, [], [])
