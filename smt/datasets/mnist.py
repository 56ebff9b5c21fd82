"""MNIST handwritten digits, read from the four official IDX ``.gz`` files."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ._base import check_loader_params, data_home, fetch

__all__ = ["load_mnist", "read_idx", "MNIST_FILES", "MNIST_MIRRORS"]

#: Official download mirrors, tried in order (the file name is appended).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: split -> ((images file, md5), (labels file, md5)); official MD5s.
MNIST_FILES = {
    "train": (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
}

_SPLIT_ALIASES = {"train": "train", "test": "test", "t10k": "test"}

# IDX type code (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array.

    Parameters
    ----------
    path : str or path-like
        IDX file; gzip compression is detected from the content.
    expected_magic : int, optional
        Required magic number (e.g. 2051 for MNIST images, 2049 for labels).

    Returns
    -------
    numpy.ndarray
        Array of the shape given by the header and the dtype given by its type
        code, in native byte order (``uint8`` for MNIST). Writable.

    Raises
    ------
    ValueError
        The file is not a valid IDX file: bad gzip stream, truncated data,
        wrong or unexpected magic number, or a payload whose length does not
        match the header. The message names the file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path.name}: cannot decompress {path}: {type(e).__name__}: {e}") from e

    if len(data) < 4:
        raise ValueError(f"{path.name}: not an IDX file ({len(data)} bytes, no header): {path}")
    magic = int.from_bytes(data[:4], "big")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{path.name}: not an IDX file (magic {magic:#010x}): {path}")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path.name}: magic number {magic}, expected {expected_magic}: {path}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path.name}: truncated header ({len(data)} bytes, need {header_len}): {path}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_len
    if payload != expected:
        raise ValueError(
            f"{path.name}: payload is {payload} bytes but the header (shape {dims}, "
            f"{dtype.itemsize}-byte items) says {expected}; the file is truncated or corrupted: {path}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the MNIST digits.

    Parameters
    ----------
    root : str or path-like, optional
        Data root holding an ``mnist/`` folder, or a folder that directly holds
        the four official files (``train-images-idx3-ubyte.gz``,
        ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
        ``t10k-labels-idx1-ubyte.gz``). Default: ``$SMT_DATA/mnist`` if
        ``SMT_DATA`` is set, else ``~/.cache/smt/mnist``.
    split : {"train", "test"}, default "train"
        ``"t10k"`` is accepted as an alias of ``"test"``.
    download : bool, default True
        Download missing files from the official mirrors
        (``https://ossci-datasets.s3.amazonaws.com/mnist/``, then
        ``http://yann.lecun.com/exdb/mnist/``). Files are always checked
        against the official MD5s.

    Returns
    -------
    images : numpy.ndarray of uint8, shape (n, 28, 28)
        Pixel values 0-255 (0 is background); n = 60000 for train, 10000 for test.
    labels : numpy.ndarray of int64, shape (n,)
        Digit classes 0-9.

    Raises
    ------
    ValueError
        Unknown ``split``; a file whose MD5 is not the official one; a file
        that is not valid IDX.
    FileNotFoundError
        A file is missing and ``download`` is False, or the download failed
        (then a :class:`smt.datasets._base.DownloadError`).

    Examples
    --------
    >>> from smt.datasets import load_mnist
    >>> x, y = load_mnist("/data", split="test")   # doctest: +SKIP
    >>> x.shape, x.dtype, y.shape, y.dtype          # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'), (10000,), dtype('int64'))
    """
    check_loader_params("load_mnist", root=root, download=download)
    key = _SPLIT_ALIASES.get(split) if isinstance(split, str) else None
    if key is None:
        raise ValueError(f"unknown MNIST split {split!r}; valid values: 'train', 'test' (or its alias 't10k')")
    (img_name, img_md5), (lbl_name, lbl_md5) = MNIST_FILES[key]
    all_names = [name for pair in MNIST_FILES.values() for name, _ in pair]
    folder = data_home(root, "mnist", files=all_names)

    img_path = fetch(img_name, folder, MNIST_MIRRORS, img_md5, download=download)
    lbl_path = fetch(lbl_name, folder, MNIST_MIRRORS, lbl_md5, download=download)

    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_name}: images have shape {images.shape}, expected (n, 28, 28): {img_path}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{lbl_name}: labels have shape {labels.shape}, expected ({images.shape[0]},) "
            f"to match {img_name}: {lbl_path}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lbl_name}: label {int(labels.max())} out of range 0-9: {lbl_path}")
    return images, labels.astype(np.int64)
