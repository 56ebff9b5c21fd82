"""WikiText-103 / WikiText-2 (word level, tokenised ``wiki.*.tokens`` files), streamed line by line.

Files are looked up like every other loader (:func:`smt.datasets._base.data_home`):
``<root or $SMT_DATA or ~/.cache/smt>/<name>/wiki.<split>.tokens``, or directly
in ``root`` when it holds the files. The official zip archives
(``wikitext-103-v1.zip``, ``wikitext-2-v1.zip``) extract to exactly these
folders (``wikitext-103/``, ``wikitext-2/``).

MD5 checks: the official archives are checked by their publishers, but no
official per-file MD5 of the extracted ``wiki.*.tokens`` files is published.
The only per-file digests known to this project are those of WikiText-2
``wiki.valid.tokens`` and ``wiki.test.tokens`` (recorded in the shared data
README, same bytes as ``wikitext-2-v1``); those two files are checked with
:func:`~smt.datasets._base.check_md5`. The other files (WikiText-2 train, all of
WikiText-103) are read unchecked: see :data:`WIKITEXT_MD5S`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from ._base import DATA_ENV, DownloadError, check_loader_params, check_md5, check_not_dir, data_home, read_text_lines

__all__ = ["load_wikitext", "clean_wikitext_line", "WIKITEXT_NAMES", "WIKITEXT_SPLITS", "WIKITEXT_MD5S"]

#: name -> Hugging Face ``Salesforce/wikitext`` config of the same (tokenised) files.
WIKITEXT_NAMES = {"wikitext-103": "wikitext-103-v1", "wikitext-2": "wikitext-2-v1"}

#: split -> (official file name, Hugging Face split name).
WIKITEXT_SPLITS = {
    "train": ("wiki.train.tokens", "train"),
    "valid": ("wiki.valid.tokens", "validation"),
    "test": ("wiki.test.tokens", "test"),
}

#: (name, file name) -> accepted MD5s. Only files whose digest is known are
#: checked; missing entries are read unchecked (no official per-file MD5 exists).
WIKITEXT_MD5S = {
    ("wikitext-2", "wiki.valid.tokens"): ("d756d22ab2310e7e60c094bea5c5a8eb",),
    ("wikitext-2", "wiki.test.tokens"): ("781c9418ab9414bd09e4aad825aae752",),
}

_HF_REPO = "Salesforce/wikitext"


def _read_lines(path: Path) -> Iterator[str]:
    # newline="\n": only LF ends a line (the official files are LF; WikiText
    # text may contain other Unicode line separators that are not line ends).
    for line in read_text_lines(path, newline="\n"):
        yield line.rstrip("\r\n")


def _hf_lines(dataset) -> Iterator[str]:
    for row in dataset:
        text = row["text"].rstrip("\r\n")
        # The HF builder stores the official blank lines (" \n") as "": restore " ".
        yield text if text else " "


def _load_hf(name: str, split: str, folder: Path, filename: str):
    config, hf_split = WIKITEXT_NAMES[name], WIKITEXT_SPLITS[split][1]
    place = (
        f"Place the official '{filename}' (from {config}.zip, word-level tokenised version, "
        f"not the raw one) in {folder} (or pass `root`, or set {DATA_ENV}, to a data root holding "
        f"a '{name}/' folder with the file)"
    )
    try:
        import datasets  # optional dependency, imported lazily
    except ImportError as e:
        raise DownloadError(
            f"{filename} not found in {folder}, and the optional 'datasets' library, used to download "
            f"it from Hugging Face ({_HF_REPO}, config {config}), is not installed ({e}). "
            f"{place}, or install it with: pip install \"sparse-manifold-transform[data]\""
        ) from e
    try:
        return datasets.load_dataset(_HF_REPO, config, split=hf_split)
    except Exception as e:  # noqa: BLE001 - offline, hub errors, ...: all mean "not available"
        raise DownloadError(
            f"{filename} not found in {folder}, and downloading {_HF_REPO} (config {config}, "
            f"split {hf_split}) with the 'datasets' library failed (is the machine offline?): "
            f"{type(e).__name__}: {e}. {place}."
        ) from e


def load_wikitext(
    name: str = "wikitext-103",
    split: str = "train",
    root: str | os.PathLike | None = None,
) -> Iterator[str]:
    """Stream the lines of a WikiText word-level (tokenised) split.

    The file is read lazily, line by line, so a 500 MB ``wiki.train.tokens``
    is never held in memory. Lines are returned as in the file (leading
    space, ``<unk>``, ``@-@`` escapes, headings and blank lines included), with
    the line end removed; clean them with :func:`clean_wikitext_line`.

    Parameters
    ----------
    name : {"wikitext-103", "wikitext-2"}, default "wikitext-103"
        Data set; also the name of its sub-folder of the data root.
    split : {"train", "valid", "test"}, default "train"
        Reads ``wiki.train.tokens``, ``wiki.valid.tokens`` or ``wiki.test.tokens``.
    root : str or path-like, optional
        Data root holding a ``<name>/`` folder, or a folder that directly holds
        the ``wiki.*.tokens`` files. Default: ``$SMT_DATA``, else ``~/.cache/smt``.

    Returns
    -------
    iterator of str
        A generator over the lines. The file is located and checked (and any
        error raised) when ``load_wikitext`` is called, not at the first
        ``next()``.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``split``; an MD5 mismatch for a file whose digest
        is known (WikiText-2 valid and test, see :data:`WIKITEXT_MD5S`).
    DownloadError
        (a ``FileNotFoundError``) the file is missing and could not be obtained
        from Hugging Face (``Salesforce/wikitext``, configs ``wikitext-103-v1`` /
        ``wikitext-2-v1``) because the optional ``datasets`` library is not
        installed (``pip install "sparse-manifold-transform[data]"``) or the
        download failed. The message says which file to place where.

    Notes
    -----
    When the file is missing and ``datasets`` is installed, the split is
    downloaded into the Hugging Face cache (not into the data root) and its
    rows are streamed from there; the HF copy stores blank lines as ``""``,
    which are returned as ``" "`` as in the official file.

    Examples
    --------
    >>> from smt.datasets import load_wikitext, clean_wikitext_line
    >>> lines = load_wikitext("wikitext-2", "valid", root="/data")       # doctest: +SKIP
    >>> sentences = (t for t in map(clean_wikitext_line, lines) if t)  # doctest: +SKIP
    """
    check_loader_params("load_wikitext", root=root)
    if name not in WIKITEXT_NAMES:
        raise ValueError(f"unknown WikiText name {name!r}; valid values: {', '.join(map(repr, WIKITEXT_NAMES))}")
    if split not in WIKITEXT_SPLITS:
        raise ValueError(f"unknown WikiText split {split!r}; valid values: {', '.join(map(repr, WIKITEXT_SPLITS))}")
    filename = WIKITEXT_SPLITS[split][0]
    folder = data_home(root, name, files=[f for f, _ in WIKITEXT_SPLITS.values()])
    path = folder / filename
    check_not_dir(path)
    if path.is_file():
        check_md5(path, WIKITEXT_MD5S.get((name, filename), ()),
                  advice=f"replace it with '{filename}' from the official {WIKITEXT_NAMES[name]}.zip "
                         f"(the tokenised version, not the raw one).")
        return _read_lines(path)
    return _hf_lines(_load_hf(name, split, folder, filename))


_HEADING = re.compile(r"^\s*=.*=\s*$")


def clean_wikitext_line(line: str, unk: str = "<unk>") -> list[str]:
    """Tokens of a WikiText line after the corpus cleaning of docs/algorithm.md §8.1.

    The ``wiki.*.tokens`` text is already tokenised, so the line is split on
    whitespace (not re-tokenised), then:

    * heading lines (`` = Title = ``, `` = = Section = = ``, ...) and empty or
      blank lines give no tokens;
    * ``unk`` tokens are dropped;
    * tokens are lower-cased (the word-similarity sets are lower-case).

    Other tokens, including WikiText's ``@-@``, ``@,@`` and ``@.@`` escapes and
    punctuation, are kept. Each line is one paragraph: a context window must
    not cross lines (docs/algorithm.md §8.1), so keep the lists separate.

    Parameters
    ----------
    line : str
        One line, e.g. from :func:`load_wikitext`.
    unk : str, default "<unk>"
        The unknown-word token to drop (matched before lower-casing).

    Returns
    -------
    list of str
        The cleaned tokens; empty for a dropped line (skip it).

    Examples
    --------
    >>> clean_wikitext_line(" The <unk> Valkyria Chronicles III is a 2011 game . ")
    ['the', 'valkyria', 'chronicles', 'iii', 'is', 'a', '2011', 'game', '.']
    >>> clean_wikitext_line(" = = Gameplay = = ")
    []
    """
    if _HEADING.match(line):
        return []
    return [tok.lower() for tok in line.split() if tok != unk]
