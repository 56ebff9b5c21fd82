"""Word-similarity benchmarks (docs/algorithm.md §8.7): WordSim-353, SimLex-999, MEN, Stanford RW.

Each file is read from ``<root or $SMT_DATA or ~/.cache/smt>/word-similarity/``
under its original release's folder and file name (a ``root`` that directly
holds those folders works too) and checked against its known MD5
(:data:`WORD_SIMILARITY_FILES`). There is no download: the files have no stable
official URL, so a missing file raises ``FileNotFoundError`` saying where to
put it.

=================  =========================================  ======  =================
loader             file                                       pairs   score scale
=================  =========================================  ======  =================
load_wordsim353    ``wordsim353/combined.csv``                353     0-10
load_simlex999     ``SimLex-999/SimLex-999.txt``              999     0-10
load_men           ``MEN/MEN_dataset_natural_form_full``      3000    0-50
load_rw            ``rw/rw.txt``                              2034    0-10
=================  =========================================  ======  =================
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._base import DATA_ENV, check_loader_params, check_md5, check_not_dir, data_home, read_text_lines

__all__ = [
    "load_wordsim353", "load_simlex999", "load_men", "load_rw",
    "evaluate_similarity", "WORD_SIMILARITY_FILES",
]

#: benchmark -> (path under word-similarity/, accepted MD5s, separator (None = whitespace),
#: header lines, word1 column, word2 column, score column).
WORD_SIMILARITY_FILES = {
    "wordsim353": ("wordsim353/combined.csv", ("5a605187d8c46fd27be60f0033c217a0",), ",", 1, 0, 1, 2),
    "simlex999": ("SimLex-999/SimLex-999.txt", ("406383a0f16c060200662f4d7798ec34",), "\t", 1, 0, 1, 3),
    "men": ("MEN/MEN_dataset_natural_form_full", ("acd96db1a843ddeb09070ea7c845b9b5",), None, 0, 0, 1, 2),
    "rw": ("rw/rw.txt", ("cce85adc682df2ed75f0aa18ddddd2a9",), "\t", 0, 0, 1, 2),
}

_FOLDER = "word-similarity"


def _load(key: str, root) -> tuple[list[tuple[str, str]], np.ndarray]:
    check_loader_params(f"load_{key}", root=root)
    relpath, md5s, sep, n_header, c1, c2, cs = WORD_SIMILARITY_FILES[key]
    subdirs = [spec[0].split("/")[0] for spec in WORD_SIMILARITY_FILES.values()]
    folder = data_home(root, _FOLDER, dirs=subdirs)
    path = folder / relpath
    check_not_dir(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{Path(relpath).name} not found: searched {path}. To fix this, put the original "
            f"'{relpath}' in {folder} (or set the loader's `root` argument, or the {DATA_ENV} "
            f"environment variable, to a data root holding a '{_FOLDER}/' folder, or to that folder)."
        )
    check_md5(path, md5s, advice=f"replace it with the original '{relpath}'.")
    pairs: list[tuple[str, str]] = []
    scores: list[float] = []
    need = max(c1, c2, cs) + 1
    # newline=None: universal newlines, so CRLF files (WordSim-353, SimLex-999) read as LF.
    for lineno, line in enumerate(read_text_lines(path), 1):
        if lineno <= n_header:
            continue
        line = line.strip()
        if not line:
            continue
        fields = line.split(sep)
        try:
            if len(fields) < need:
                raise ValueError(f"{len(fields)} fields, need at least {need}")
            score = float(fields[cs])
        except ValueError as e:
            raise ValueError(f"{path.name}: cannot parse line {lineno} of {path}: {line!r} ({e})") from None
        pairs.append((fields[c1].strip().lower(), fields[c2].strip().lower()))
        scores.append(score)
    return pairs, np.asarray(scores, dtype=np.float64)


_RETURNS = """
    Returns
    -------
    pairs : list of (str, str)
        The word pairs, lower-cased, in file order.
    scores : numpy.ndarray of float64, shape (len(pairs),)
        The human ratings (higher = more similar)."""

_RAISES = """
    Raises
    ------
    FileNotFoundError
        The file is missing (no download is attempted); the message says where to put it.
    ValueError
        The file's MD5 is not the known one, or a line cannot be parsed."""

_ROOT = """
    Parameters
    ----------
    root : str or path-like, optional
        Data root holding a ``word-similarity/`` folder, or that folder itself.
        Default: ``$SMT_DATA``, else ``~/.cache/smt``."""


def load_wordsim353(root: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], np.ndarray]:
    return _load("wordsim353", root)


def load_simlex999(root: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], np.ndarray]:
    return _load("simlex999", root)


def load_men(root: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], np.ndarray]:
    return _load("men", root)


def load_rw(root: str | os.PathLike | None = None) -> tuple[list[tuple[str, str]], np.ndarray]:
    return _load("rw", root)


load_wordsim353.__doc__ = f"""WordSim-353, full set (Finkelstein et al. 2002), ``wordsim353/combined.csv``.

    353 pairs (``money``/``cash`` appears twice, as in the original); mean human
    rating on a 0-10 scale. CSV with CRLF line ends and one header line.
{_ROOT}
{_RETURNS}
{_RAISES}
    """
load_simlex999.__doc__ = f"""SimLex-999 (Hill et al. 2015), ``SimLex-999/SimLex-999.txt``.

    999 pairs; the score is the ``SimLex999`` column (4th), 0-10 scale. Tab
    separated, CRLF line ends, one header line; the other columns are ignored.
{_ROOT}
{_RETURNS}
{_RAISES}
    """
load_men.__doc__ = f"""MEN (Bruni et al. 2014), natural form, ``MEN/MEN_dataset_natural_form_full``.

    3000 pairs; 0-50 scale. Space separated, no header.
{_ROOT}
{_RETURNS}
{_RAISES}
    """
load_rw.__doc__ = f"""Stanford Rare Words (Luong et al. 2013), ``rw/rw.txt``.

    2034 pairs; the score is the 3rd column (the released average), 0-10 scale.
    Tab separated, no header; the individual ratings that follow are ignored.
{_ROOT}
{_RETURNS}
{_RAISES}
    """


def evaluate_similarity(
    similarity: Callable[[str, str], float],
    pairs: Sequence[tuple[str, str]],
    scores,
) -> dict:
    """Spearman correlation between a model's word similarities and human scores.

    Pairs with an out-of-vocabulary word are skipped and reported through the
    coverage (docs/algorithm.md §8.7).

    Parameters
    ----------
    similarity : callable
        ``similarity(word1, word2)`` returns a float (e.g. the cosine of the
        two embeddings) or raises ``KeyError`` when a word is out of vocabulary.
    pairs : sequence of (str, str)
        Word pairs, e.g. from :func:`load_simlex999`.
    scores : array-like of float, shape (len(pairs),)
        Human ratings of the pairs.

    Returns
    -------
    dict
        ``spearman``: Spearman's rho (:func:`scipy.stats.spearmanr`) over the
        covered pairs, NaN when fewer than 2 pairs are covered or either side
        is constant; ``coverage``: ``n_covered / n_pairs``; ``n_pairs``; ``n_covered``.

    Raises
    ------
    ValueError
        ``pairs`` is empty or ``pairs`` and ``scores`` have different lengths.
    """
    from scipy.stats import spearmanr

    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pairs = len(pairs)
    if n_pairs == 0:
        raise ValueError("no pairs to evaluate")
    if scores.shape[0] != n_pairs:
        raise ValueError(f"pairs and scores have different lengths: {n_pairs} and {scores.shape[0]}")
    predicted, gold = [], []
    for (a, b), score in zip(pairs, scores):
        try:
            value = float(similarity(a, b))
        except KeyError:
            continue
        predicted.append(value)
        gold.append(score)
    n_covered = len(predicted)
    rho = math.nan
    if n_covered >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: rho is NaN, reported as such
            rho = float(spearmanr(predicted, gold).statistic)
    return {"spearman": rho, "coverage": n_covered / n_pairs, "n_pairs": n_pairs, "n_covered": n_covered}
