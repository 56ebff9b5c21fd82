"""The SMT word embedding (docs/algorithm.md §8): one-hot codes over a vocabulary, window
co-occurrence statistics (:class:`smt.cooccurrence.WindowCooccurrence`) and the generalised
eigen-solve of :mod:`smt.spectral`, fitted in one streaming pass over text.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from smt._io import ModelFileError, meta_field, read_model, save_npz
from smt._validation import Integral, Interval, StrOptions, StrSequence, check_int, check_params
from smt.cooccurrence import WEIGHTINGS, WindowCooccurrence
from smt.spectral import solve_embedding, solve_sparse_embedding
from smt.text import Vocabulary, basic_english_tokenize

__all__ = ["SMTWordEmbedding"]


TOKENIZERS = ("basic_english", "whitespace")
SOLVERS = ("auto", "dense", "sparse")


def _decoded(lines):
    """``lines``, with a text file's invalid UTF-8 reported as a ``ValueError`` naming the file and
    the line reached (a file object decodes as it is iterated, inside the fit)."""
    it, n = iter(lines), 0
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except UnicodeDecodeError as e:
            name = getattr(lines, "name", None)
            raise ValueError(f"the corpus{f' {name}' if name else ''} is not valid UTF-8 ({e.reason}, found after "
                             f"{n} lines were read); open it with its encoding, or with errors='replace'") from None
        yield line
        n += 1


# Up to here the dense generalized solver of the image pipeline is used; above it, ARPACK on the
# sparse normalised Laplacian (a dense V x V problem at V = 50 000 needs 20 GB).
_DENSE_MAX_WORDS = 2048
_FORMAT_VERSION = 1


class SMTWordEmbedding(BaseEstimator):
    """Sparse Manifold Transform word embedding (docs/algorithm.md §8), fitted in one streaming pass over text.

    The dictionary is the vocabulary of the ``max_vocab`` most frequent words and the code of a
    token is one-hot; two tokens are neighbours when at most ``window`` positions apart in one line.
    The embedding solves ``(Deg - C) p = lambda diag(f) p`` for the slowest directions (a
    normalised-Laplacian eigenmap of the co-occurrence graph): word w gets column w of P,
    L2-normalised, so similarities are cosines.

    Parameters
    ----------
    n_components : int, default 300
        d, the embedding dimension.
    max_vocab : int or None, default 50000
        V: keep the most frequent words (ties broken alphabetically). ``None`` keeps all.
    min_count : int, default 1
        Keep only words seen at least this often.
    window : int, default 5
        w, the context half-width in tokens (docs/algorithm.md §8.3).
    weighting : {"uniform", "inverse_distance"}, default "uniform"
        Weight of a co-occurrence at distance o: 1 or 1/o.
    n_skip : int, default 1
        Slowest directions dropped; for one-hot codes the first is the constant vector.
    tokenizer : {"basic_english", "whitespace"} or callable, default "basic_english"
        Applied to lines given as ``str``; lines given as lists of tokens are used as they are
        (e.g. WikiText through :func:`smt.datasets.clean_wikitext_line`).
    specials : sequence of str, default ("<unk>",)
        Tokens that never become words (they still take window positions).
    solver : {"auto", "dense", "sparse"}, default "auto"
        "dense": the image pipeline's generalized eigensolver on dense V x V matrices; "sparse":
        ARPACK on the sparse operator; "auto": dense up to 2048 words.
    random_state : int, RandomState or None
        Seeds the sparse solver's start vector.
    verbose : bool, default False
        Progress bar over lines.

    Attributes
    ----------
    vocabulary_ : list of str
        The embedded words, most frequent first; row i of ``embedding_`` is ``vocabulary_[i]``.
    counts_ : ndarray of shape (V,), int64
        Occurrences of each word.
    embedding_ : ndarray of shape (V, d), float32
        Unit-norm word vectors.
    components_ : ndarray of shape (d, V)
        P, before normalisation of the columns.
    eigenvalues_ : ndarray of shape (d,)
        Slowness of each kept direction, ascending.
    n_tokens_ : int
        Tokens read (specials included).
    n_lines_ : int
        Lines read.
    n_dropped_words_ : int
        Vocabulary words left out because they share no window with the main connected component
        of the co-occurrence graph (their embedding is undefined).
    fit_stats_ : dict
        Seconds spent counting and solving.

    Examples
    --------
    >>> lines = ["the cat sat on the mat", "the dog sat on the log"] * 50
    >>> model = SMTWordEmbedding(n_components=2, tokenizer="whitespace").fit(lines)
    >>> model.transform(["cat", "dog"]).shape
    (2, 2)
    """

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "max_vocab": [Interval(Integral, 1, None, closed="left"), None],
        "min_count": [Interval(Integral, 1, None, closed="left")],
        "window": [Interval(Integral, 1, None, closed="left")],
        "weighting": [StrOptions(set(WEIGHTINGS))],
        "n_skip": [Interval(Integral, 0, None, closed="left")],
        "tokenizer": [StrOptions(set(TOKENIZERS)), callable],
        "specials": [StrSequence()],
        "solver": [StrOptions(set(SOLVERS))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, n_components=300, *, max_vocab=50000, min_count=1, window=5, weighting="uniform",
                 n_skip=1, tokenizer="basic_english", specials=("<unk>",), solver="auto",
                 random_state=None, verbose=False):
        self.n_components = n_components
        self.max_vocab = max_vocab
        self.min_count = min_count
        self.window = window
        self.weighting = weighting
        self.n_skip = n_skip
        self.tokenizer = tokenizer
        self.specials = specials
        self.solver = solver
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None):
        """Count words and co-occurrences in one pass over ``X``, then solve for the embedding.

        Parameters
        ----------
        X : iterable of str or of sequences of str
            Lines of text (consumed once; a generator is fine). A window never crosses a line.
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        tokenize = self._tokenizer()
        tic = time.perf_counter()
        stats = WindowCooccurrence(self.window, self.weighting)
        if isinstance(X, (str, bytes)):
            raise TypeError("X must be an iterable of lines, got a single string; wrap it in a list")
        total = len(X) if hasattr(X, "__len__") else None
        for i, line in enumerate(tqdm(_decoded(X), desc="co-occurrence", unit=" lines", total=total,
                                      disable=not self.verbose)):
            if isinstance(line, str):
                tokens = tokenize(line)
                if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(
                        isinstance(t, str) for t in tokens):
                    raise TypeError(f"the tokenizer returned a {type(tokens).__name__} for line {i} ({line[:40]!r}); "
                                    f"it must return a list of str tokens")
            elif isinstance(line, Sequence) and all(isinstance(t, str) for t in line):
                tokens = line
            else:
                raise TypeError(f"line {i} is a {type(line).__name__}; each line must be a str or a list of str")
            stats.add(tokens)
        counts = stats.counts()
        if stats.n_tokens_ == 0:
            raise ValueError(f"the corpus holds no tokens ({stats.n_lines_} lines read): nothing to embed")
        vocab = Vocabulary(self.min_count, self.max_vocab, self.specials).fit_counts(
            Counter(dict(zip(stats.index_, counts.tolist()))), stats.n_lines_)
        words, f, upper = stats.restrict(vocab.tokens_)
        n_tokens, n_lines = stats.n_tokens_, stats.n_lines_
        del stats  # the pair table is spent: free it before the solve
        count_seconds = time.perf_counter() - tic

        # Words in other connected components than the largest have no defined relation to it:
        # each extra component adds a zero eigenvalue, so they are left out of the vocabulary.
        keep = np.zeros(len(f), dtype=bool)
        if len(f):
            _, label = scipy.sparse.csgraph.connected_components(upper, directed=False)
            keep = label == np.bincount(label).argmax()
            keep &= (np.asarray(upper.sum(axis=0)).ravel() + np.asarray(upper.sum(axis=1)).ravel()) > 0
        n_total = self.n_components + self.n_skip
        if keep.sum() <= n_total:
            raise ValueError(
                f"n_components + n_skip = {n_total} needs more than that many connected words, but the "
                f"corpus gives {int(keep.sum())} ({len(f)} in the vocabulary, min_count={self.min_count}, "
                f"max_vocab={self.max_vocab}); lower n_components or fit on more text")
        if not keep.all():
            f, upper = f[keep], upper[keep][:, keep]
            words = [w for w, k in zip(words, keep) if k]

        tic = time.perf_counter()
        solver = self.solver
        if solver == "auto":
            solver = "dense" if len(f) <= _DENSE_MAX_WORDS else "sparse"
        if solver == "dense":
            c = (upper + upper.T).toarray()
            p, evals, _ = solve_embedding(np.diag(f.astype(np.float64)), np.diag(c.sum(axis=1)) - c, int(f.sum()),
                                          self.n_components, self.n_skip)
        else:
            p, evals, _ = solve_sparse_embedding(f, upper, self.n_components, self.n_skip, self.random_state)
        # Rows were in order of first sight (see restrict): back to the vocabulary's order.
        rank = np.fromiter((vocab.index_[w] for w in words), dtype=np.int64, count=len(words))
        order = np.argsort(rank)
        self.vocabulary_ = [words[i] for i in order]
        self.counts_ = f[order]
        p = p[:, order]
        self.components_ = p
        self.eigenvalues_ = evals
        self.n_tokens_ = n_tokens
        self.n_lines_ = n_lines
        self.n_dropped_words_ = int(len(keep) - keep.sum())
        self.fit_stats_ = {"count_seconds": count_seconds, "solve_seconds": time.perf_counter() - tic}
        self._set_embedding()
        return self

    def transform(self, words):
        """Vectors of words.

        Parameters
        ----------
        words : str or sequence of str

        Returns
        -------
        ndarray of shape (d,) for one word, (n, d) for a sequence; float32, unit norm.

        Raises
        ------
        KeyError
            A word is not in the vocabulary (the message names it).
        """
        check_is_fitted(self, "embedding_")
        if isinstance(words, str):
            return self.embedding_[self._lookup(words)].copy()
        return self.embedding_[[self._lookup(w) for w in words]].reshape(-1, self.embedding_.shape[1])

    def similarity(self, a, b):
        """Cosine similarity of two words (a float in [-1, 1])."""
        return float(self.transform(a) @ self.transform(b))

    def most_similar(self, word, topn=10):
        """The ``topn`` nearest words to ``word`` by cosine, itself excluded.

        Returns
        -------
        list of (str, float)
            Most similar first.
        """
        query = self._lookup(word)
        topn = check_int("topn", topn, 1, caller="SMTWordEmbedding.most_similar")
        sims = self.embedding_ @ self.embedding_[query]
        sims[query] = -np.inf
        top = np.argsort(-sims, kind="stable")[:topn]
        return [(self.vocabulary_[i], float(sims[i])) for i in top]

    def save(self, path):
        """Save parameters and fitted state to one ``.npz`` file (arrays and JSON, no pickle)."""
        check_is_fitted(self, "embedding_")
        if callable(self.tokenizer):
            raise ValueError("a model with a callable tokenizer cannot be saved; pass a tokenizer name")
        specials = [self.specials] if isinstance(self.specials, str) else list(self.specials)
        params = {**self.get_params(), "specials": specials}
        meta = {"kind": "SMTWordEmbedding", "format_version": _FORMAT_VERSION, "params": params,
                "n_tokens": self.n_tokens_, "n_lines": self.n_lines_, "n_dropped_words": self.n_dropped_words_}
        save_npz(path, meta, {"vocabulary": np.array(self.vocabulary_, dtype=str), "counts": self.counts_,
                              "components": self.components_, "eigenvalues": self.eigenvalues_})

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save`.

        Raises
        ------
        ModelFileError
            (a ``ValueError``) naming the file and the problem: not an SMTWordEmbedding file
            (another kind, damaged, truncated, empty), invalid parameters, arrays of the wrong shape.
        """
        model = cls()
        meta, arrays, params = read_model(path, "SMTWordEmbedding", _FORMAT_VERSION, model.get_params())
        try:
            model.set_params(**params)
            model._check_params()
            for name in ("vocabulary", "counts", "components", "eigenvalues"):
                if name not in arrays:
                    raise ValueError(f"the array {name} is missing")
            vocabulary, components = arrays["vocabulary"], arrays["components"]
            n_words, d = len(vocabulary), model.n_components
            if vocabulary.ndim != 1 or vocabulary.dtype.kind != "U":
                raise ValueError(f"vocabulary must be a 1-D array of str, got {vocabulary.dtype} {vocabulary.shape}")
            for name, shape in (("counts", (n_words,)), ("components", (d, n_words)), ("eigenvalues", (d,))):
                if arrays[name].shape != shape:
                    raise ValueError(f"{name} has shape {arrays[name].shape}, the vocabulary and n_components "
                                     f"give {shape}")
            if not np.issubdtype(components.dtype, np.floating) or not np.isfinite(components).all():
                raise ValueError(f"components must hold finite floats (dtype {components.dtype})")
            model.n_tokens_ = meta_field(meta, "n_tokens", int, path)
            model.n_lines_ = meta_field(meta, "n_lines", int, path)
            model.n_dropped_words_ = meta_field(meta, "n_dropped_words", int, path)
        except ModelFileError:
            raise
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: not a usable SMTWordEmbedding model: {e}") from e
        model.vocabulary_ = vocabulary.tolist()
        model.counts_ = arrays["counts"]
        model.components_ = components
        model.eigenvalues_ = arrays["eigenvalues"]
        model._set_embedding()
        return model

    def _set_embedding(self):
        e = self.components_.T
        self.embedding_ = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
        self._index = {w: i for i, w in enumerate(self.vocabulary_)}

    def _lookup(self, word):
        check_is_fitted(self, "embedding_")
        try:
            return self._index[word]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self._index)} words; "
                           f"max_vocab={self.max_vocab}, min_count={self.min_count})") from None
        except TypeError:
            raise TypeError(f"words must be str, got {type(word).__name__}") from None

    def _tokenizer(self):
        if callable(self.tokenizer):
            return self.tokenizer
        return basic_english_tokenize if self.tokenizer == "basic_english" else str.split

    def _check_params(self):
        check_params(self.get_params(), self._parameter_constraints, type(self).__name__)
