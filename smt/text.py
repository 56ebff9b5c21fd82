"""Text utilities for the word-embedding variant of the SMT (docs/algorithm.md §8).

This module holds the corpus-independent pieces:

* :func:`basic_english_tokenize` -- a dependency-free re-implementation of
  torchtext's ``get_tokenizer("basic_english")`` (docs/algorithm.md §8.1, for raw text; the
  WikiText ``*.tokens`` files are already tokenised and are split on
  whitespace instead, see :func:`smt.datasets.wikitext.clean_wikitext_line`);
* :class:`Vocabulary` -- word counts and the frequency-ranked dictionary of the
  V most frequent words (docs/algorithm.md §8.2), built in one streaming pass.

The estimator that uses them is :class:`smt.word_embedding.SMTWordEmbedding`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from smt._validation import StrSequence, check_int, check_param

__all__ = ["basic_english_tokenize", "Vocabulary"]

# torchtext's basic_english rules, in torchtext's order (the order matters only
# for odd inputs such as '<br "/>', which becomes '<br />' once '"' is deleted
# and is therefore replaced after it, exactly as in torchtext).
_BASIC_ENGLISH_RULES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"'", " '  "),
        (r'"', ""),
        (r"\.", " . "),
        (r"<br \/>", " "),
        (r",", " , "),
        (r"\(", " ( "),
        (r"\)", " ) "),
        (r"!", " ! "),
        (r"\?", " ? "),
        (r";", " "),
        (r":", " "),
        (r"\s+", " "),
    )
)


def basic_english_tokenize(line: str) -> list[str]:
    """Split a line of raw English text into tokens, like torchtext's ``basic_english``.

    Gives the same tokens as ``torchtext.data.utils.get_tokenizer("basic_english")``
    without depending on torchtext (which is retired). The rules, applied in
    this order with precompiled regular expressions:

    1. lower-case the line;
    2. put spaces around ``'``, ``.``, ``,``, ``(``, ``)``, ``!`` and ``?``;
    3. delete ``"``;
    4. turn ``<br />``, ``;`` and ``:`` into spaces;
    5. split on whitespace.

    Parameters
    ----------
    line : str
        One line (or any string) of raw text.

    Returns
    -------
    list of str
        The tokens; empty for an empty or blank line.

    Examples
    --------
    >>> basic_english_tokenize('Hello, World! It\\'s 3.5 "apples" (fresh);<br />ok?')
    ['hello', ',', 'world', '!', 'it', "'", 's', '3', '.', '5', 'apples', '(', 'fresh', ')', 'ok', '?']
    """
    if not isinstance(line, str):
        raise TypeError(f"basic_english_tokenize expects a str, got {type(line).__name__}")
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


class Vocabulary:
    """Frequency-ranked word vocabulary, built from tokenised lines in one pass.

    Counting is streaming: only the per-word counts are kept, so memory does not
    grow with the corpus length (only with the number of distinct words).
    Words are ranked by decreasing count, ties broken by the word string
    (ascending), so the result does not depend on the corpus order. Special
    tokens (such as ``<unk>``) are counted and reported in
    :attr:`special_counts_` but never enter the vocabulary (they get no
    embedding).

    Parameters
    ----------
    min_count : int, default 1
        Keep only words seen at least this many times.
    max_size : int or None, default None
        Keep at most this many words (the most frequent ones, after
        ``min_count``). ``None`` keeps all. Spec 8.2 uses 50 000.
    specials : sequence of str, default ("<unk>",)
        Tokens excluded from the vocabulary but reported.

    Attributes
    ----------
    tokens_ : list of str
        The vocabulary, most frequent first; ``tokens_[i]`` is word ``i``.
    counts_ : numpy.ndarray of int64, shape (len(tokens_),)
        ``counts_[i]`` is the number of occurrences of ``tokens_[i]``
        (non-increasing).
    index_ : dict of str to int
        Word -> index into ``tokens_`` / ``counts_``.
    special_counts_ : dict of str to int
        Occurrences of each special token (0 when never seen).
    n_tokens_ : int
        Number of non-special tokens counted (in or out of the vocabulary).
    n_types_ : int
        Number of distinct non-special words counted, before ``min_count`` and
        ``max_size``.
    n_lines_ : int
        Number of token lists read.

    Examples
    --------
    >>> vocab = Vocabulary(min_count=2).fit([["the", "cat", "<unk>"], ["the", "cat", "sat"]])
    >>> vocab.tokens_, vocab.counts_.tolist(), vocab.special_counts_
    (['cat', 'the'], [2, 2], {'<unk>': 1})
    >>> vocab.lookup("the"), "sat" in vocab, len(vocab)
    (1, False, 2)
    """

    def __init__(self, min_count: int = 1, max_size: int | None = None,
                 specials: Sequence[str] = ("<unk>",)):
        self.min_count = min_count
        self.max_size = max_size
        self.specials = specials

    def fit(self, token_lists: Iterable[Sequence[str]]) -> "Vocabulary":
        """Count the words of ``token_lists`` and build the vocabulary.

        Parameters
        ----------
        token_lists : iterable of sequences of str
            Tokenised lines, e.g. a generator of ``line.split()``; consumed once.

        Returns
        -------
        Vocabulary
            ``self``, fitted.

        Raises
        ------
        ValueError
            Invalid ``min_count``, ``max_size`` or ``specials``.
        TypeError
            An item of ``token_lists`` is a string rather than a list of tokens.
        """
        self._check_params()
        counter: Counter[str] = Counter()
        n_lines = 0
        for tokens in token_lists:
            if isinstance(tokens, str):
                raise TypeError(
                    f"token list {n_lines} is a str ({tokens[:40]!r}); pass lists of tokens, "
                    "e.g. line.split() or basic_english_tokenize(line)"
                )
            counter.update(tokens)
            n_lines += 1
        return self.fit_counts(counter, n_lines)

    def _check_params(self):
        min_count = check_int("min_count", self.min_count, 1, caller="Vocabulary")
        max_size = check_int("max_size", self.max_size, 1, allow_none=True, caller="Vocabulary")
        check_param("specials", self.specials, [StrSequence()], "Vocabulary")
        specials = [self.specials] if isinstance(self.specials, str) else list(self.specials)
        return min_count, max_size, specials

    def fit_counts(self, counter, n_lines):
        """Build the vocabulary from word counts already made (as :meth:`fit` does from lines).

        Parameters
        ----------
        counter : dict of str to int
            Word counts; the special tokens are popped from it.
        n_lines : int
            Lines the counts were made from.

        Returns
        -------
        self
        """
        min_count, max_size, specials = self._check_params()
        self.special_counts_ = {s: counter.pop(s, 0) for s in specials}
        self.n_lines_ = n_lines
        self.n_types_ = len(counter)
        self.n_tokens_ = int(sum(counter.values()))
        kept = sorted((item for item in counter.items() if item[1] >= min_count),
                      key=lambda item: (-item[1], item[0]))
        if max_size is not None:
            kept = kept[:max_size]
        self.tokens_ = [word for word, _ in kept]
        self.counts_ = np.fromiter((c for _, c in kept), dtype=np.int64, count=len(kept))
        self.index_ = {word: i for i, word in enumerate(self.tokens_)}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise AttributeError("this Vocabulary is not fitted yet; call fit(token_lists) first")

    def __len__(self) -> int:
        self._check_fitted()
        return len(self.tokens_)

    def __contains__(self, word) -> bool:
        self._check_fitted()
        return word in self.index_

    def lookup(self, word: str) -> int:
        """Index of ``word`` in the vocabulary.

        Parameters
        ----------
        word : str
            A word, exactly as counted (no lower-casing is applied here).

        Returns
        -------
        int
            Its index into :attr:`tokens_` and :attr:`counts_`.

        Raises
        ------
        KeyError
            ``word`` is not in the vocabulary (the message names it, and says
            whether it is a special token).
        """
        self._check_fitted()
        try:
            return self.index_[word]
        except KeyError:
            if word in self.special_counts_:
                why = "it is a special token, excluded from the vocabulary"
            else:
                why = (f"out of vocabulary: {len(self.tokens_)} words, min_count={self.min_count}, "
                       f"max_size={self.max_size}")
            raise KeyError(f"word {word!r} is not in the vocabulary ({why})") from None

    def __repr__(self) -> str:
        fitted = f", {len(self.tokens_)} words" if hasattr(self, "tokens_") else ""
        return (f"Vocabulary(min_count={self.min_count!r}, max_size={self.max_size!r}, "
                f"specials={self.specials!r}{fitted})")
