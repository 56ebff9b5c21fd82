"""Shared helpers for the data set loaders: where data lives, checksums, downloads.

Every loader in :mod:`smt.datasets` finds its files the same way:

1. the folder is resolved by :func:`data_home` from the loader's ``root``
   argument, else the ``SMT_DATA`` environment variable, else ``~/.cache/smt``;
   a data root holds one sub-folder per data set (``mnist/``, ``cifar10/``, ...),
   but a folder that directly holds a data set's files works too;
2. each file is obtained with :func:`fetch`, which checks its MD5 against the
   official value and, when the file is missing and downloading is allowed,
   downloads it from the official mirrors (files of an already extracted
   archive are checked with :func:`check_md5`).

A corrupted or wrong file is never used silently: an MD5 mismatch raises
``ValueError``. A missing file that cannot be downloaded raises
``FileNotFoundError`` (a :class:`DownloadError` when downloads were tried) whose
message says which file, which folder, which URLs were tried and why they
failed, and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

from smt._validation import PATH, check_params

__all__ = ["DATA_ENV", "DownloadError", "data_home", "md5sum", "check_md5", "fetch"]

#: Environment variable naming the data root (a folder holding ``mnist/`` etc.).
DATA_ENV = "SMT_DATA"

#: Timeout in seconds for each download attempt (connection and reads).
DOWNLOAD_TIMEOUT = 30

#: Overall deadline in seconds of one file's download from one URL: a server that trickles bytes
#: never trips the per-read timeout, so the whole transfer is bounded too (CIFAR-100's 161 MB
#: take 30 minutes at 90 kB/s). Checked after every read, so it is overrun by at most one
#: ``DOWNLOAD_TIMEOUT``.
DOWNLOAD_DEADLINE = 30 * 60

#: Constraints of the loaders' common parameters (scikit-learn style, see smt._validation).
LOADER_PARAMS = {"root": PATH, "split": [str], "download": ["boolean"], "return_names": ["boolean"],
                 "name": [str], "label_type": [str]}


def check_loader_params(caller: str, **params) -> None:
    """Validate a loader's parameters against :data:`LOADER_PARAMS` (the error names the bad one)."""
    check_params(params, LOADER_PARAMS, caller)


def check_not_dir(path: Path) -> None:
    """A folder where a data file should be is an error of its own, not a missing file."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, but it should be the data file {path.name}: "
                                f"remove or rename the folder")


def read_text_lines(path: Path, **open_kw) -> Iterable[str]:
    """Lines of a UTF-8 text file; invalid UTF-8 raises a ``ValueError`` naming the file and line."""
    with open(path, encoding="utf-8", **open_kw) as f:
        try:
            yield from f
        except UnicodeDecodeError:
            pass  # the text is decoded in blocks: find the line from the bytes
        else:
            return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path.name}: line {lineno} of {path} is not valid UTF-8 ({e.reason} at "
                                 f"byte {e.start} of the line); the file is damaged or not the official one") from None
    raise ValueError(f"{path.name}: {path} is not valid UTF-8")  # a sequence split across lines


class DownloadError(FileNotFoundError, RuntimeError):
    """A required data file is missing and could not be downloaded.

    Subclasses both ``FileNotFoundError`` (the file is not there) and
    ``RuntimeError`` (the download failed), so either can be caught.
    """


def _default_base() -> Path:
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "smt"


def data_home(
    root: str | os.PathLike | None = None,
    name: str | None = None,
    files: Iterable[str] = (),
    dirs: Iterable[str] = (),
) -> Path:
    """Resolve the folder that holds a data set.

    Parameters
    ----------
    root : str or path-like, optional
        Data root. When omitted, ``$SMT_DATA`` is used if set (and non-empty),
        else ``~/.cache/smt``.
    name : str, optional
        Name of the data set's sub-folder (e.g. ``"mnist"``). When omitted the
        base folder itself is returned.
    files : iterable of str, optional
        File names of the data set. Used to accept a folder that directly
        holds the files (see below).
    dirs : iterable of str, optional
        Folder names of the data set (e.g. an extracted archive,
        ``"cifar-10-batches-py"``), used like ``files``.

    Returns
    -------
    pathlib.Path
        Resolution order, with ``base`` the folder from ``root`` / ``$SMT_DATA``
        / ``~/.cache/smt``:

        1. ``base / name`` if that folder exists;
        2. ``base`` if any of ``files`` is directly in it, or any of ``dirs``
           is a folder directly in it (a root that holds the files itself,
           e.g. ``root="/data/mnist"``);
        3. otherwise ``base / name`` (which may not exist yet: it is where a
           download will put the files).

    Examples
    --------
    >>> data_home("/data", "mnist")   # doctest: +SKIP
    PosixPath('/data/mnist')
    """
    base = Path(root).expanduser() if root is not None else _default_base()
    if name is None:
        return base
    sub = base / name
    if sub.is_dir():
        return sub
    if any((base / f).is_file() for f in files) or any((base / d).is_dir() for d in dirs):
        return base
    return sub


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks of ``chunk`` bytes."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _as_list(x: str | Iterable[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


_REPLACE_ADVICE = (
    "delete it (it is downloaded again when download=True) or replace it with the official file."
)


def check_md5(
    path: str | os.PathLike,
    md5s: str | Iterable[str],
    advice: str = _REPLACE_ADVICE,
) -> None:
    """Raise ``ValueError`` unless the file's MD5 is one of ``md5s``.

    Parameters
    ----------
    path : str or path-like
        An existing file.
    md5s : str or iterable of str
        Accepted MD5 digests (hex, any case). Empty means no check (and the
        file is not read).
    advice : str, optional
        How to fix a mismatch; ends the error message.

    Raises
    ------
    ValueError
        The MD5 is not one of ``md5s``. The message names the file and gives
        the MD5 found and the accepted ones.
    """
    path = Path(path)
    md5s = [m.lower() for m in _as_list(md5s)]
    if not md5s:
        return
    digest = md5sum(path)
    if digest not in md5s:
        raise ValueError(
            f"{path.name}: md5 mismatch for {path}: found {digest}, expected "
            f"{' or '.join(md5s)}. The file is corrupted, truncated or not the "
            f"official one; {advice}"
        )


def _fix_hint(filename: str, folder: Path) -> str:
    return (
        f"To fix this, put the official '{filename}' in {folder} "
        f"(or set the loader's `root` argument, or the {DATA_ENV} environment "
        f"variable, to a data root that holds the file, directly or in a "
        f"sub-folder named after the data set)."
    )


def _download(url: str, dest: Path, md5s: Sequence[str]) -> None:
    """Download ``url`` to ``dest`` through a temp file; raise on any failure."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp:
            n, expected = 0, resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            while True:
                block = resp.read1(1 << 20)  # what has arrived: a trickle cannot hold one read open
                if not block:
                    break
                h.update(block)
                out.write(block)
                n += len(block)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after the {DOWNLOAD_DEADLINE} s deadline ({n} bytes received; "
                                       f"the server is too slow): try again later or download it by hand")
            if expected is not None and expected.isdigit() and n != int(expected):
                raise OSError(f"the connection closed after {n} of the {expected} bytes announced")
        digest = h.hexdigest()
        if md5s and digest not in md5s:
            raise ValueError(f"downloaded file has md5 {digest}, expected {' or '.join(md5s)}")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch(
    filename: str,
    folder: str | os.PathLike,
    urls: str | Iterable[str],
    md5s: str | Iterable[str],
    download: bool = True,
) -> Path:
    """Return the path of a verified data file, downloading it if allowed.

    Parameters
    ----------
    filename : str
        File name, e.g. ``"train-images-idx3-ubyte.gz"``.
    folder : str or path-like
        Folder that holds (or will hold) the file.
    urls : str or iterable of str
        Sources tried in order. An entry ending in ``/`` is a mirror to which
        ``filename`` is appended; any other entry is the file's full URL.
    md5s : str or iterable of str
        Accepted MD5 digests (hex). Empty means no check.
    download : bool, default True
        Whether to try the URLs when the file is missing.

    Returns
    -------
    pathlib.Path
        ``folder / filename``, whose MD5 is one of ``md5s``.

    Raises
    ------
    ValueError
        The file exists but its MD5 is not one of ``md5s`` (corrupted,
        truncated or a different version).
    FileNotFoundError
        The file is missing and ``download`` is False.
    DownloadError
        (a ``FileNotFoundError`` and a ``RuntimeError``) the file is missing
        and every URL failed; the message lists each URL and its error.
    """
    folder = Path(folder).expanduser()
    path = folder / filename
    md5s = [m.lower() for m in _as_list(md5s)]
    full_urls = [u + filename if u.endswith("/") else u for u in _as_list(urls)]

    check_not_dir(path)
    if path.is_file():
        check_md5(path, md5s)
        return path

    if not download:
        raise FileNotFoundError(
            f"{filename} not found: searched {folder} (download=False). "
            + _fix_hint(filename, folder)
            + (" Or call the loader with download=True to fetch it from " + ", ".join(full_urls) + "."
               if full_urls else "")
        )

    failures: list[str] = []
    # The folders this call makes are removed again if nothing arrives: a failed or mistyped
    # download leaves nothing behind (the error names the folder to put the file in).
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        failures.append(f"  cannot create folder {folder}: {e}")
    else:
        try:
            for url in full_urls:
                print(f"Downloading {url} to {path}", file=sys.stderr)
                try:
                    _download(url, path, md5s)
                    return path
                except Exception as e:  # noqa: BLE001 - any failure moves on to the next mirror
                    failures.append(f"  {url}: {type(e).__name__}: {e}")
        finally:
            if not path.is_file():
                for p in made:  # innermost first; a folder something else has put files in stays
                    try:
                        p.rmdir()
                    except OSError:
                        break
    if not full_urls:
        failures.append("  (no URL to try)")
    raise DownloadError(
        f"{filename} not found in {folder} and the download failed "
        f"(is the machine offline?). Tried:\n" + "\n".join(failures) + "\n" + _fix_hint(filename, folder)
    )
