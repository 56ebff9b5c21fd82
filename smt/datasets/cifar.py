"""CIFAR-10 and CIFAR-100 tiny images, read from the official "python version".

The official archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``)
hold pickled batches: dicts with a ``b"data"`` uint8 array of shape (n, 3072),
each row 1024 red, then 1024 green, then 1024 blue values of a 32x32 image in
row-major order, and the labels as a list of ints. The batches are read
straight out of the ``.tar.gz`` (nothing is extracted to disk); an already
extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``) works too.

The batches are pickles, and unpickling can run arbitrary code. They are
therefore read with :class:`RestrictedUnpickler`, which resolves only the few
numpy globals that an array pickle needs and refuses every other one.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import pickle
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Mapping

import numpy as np

from ._base import check_loader_params, check_md5, data_home, fetch

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2 has no numpy._core
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "load_cifar10",
    "load_cifar100",
    "CifarSpec",
    "CIFAR10",
    "CIFAR100",
    "RestrictedUnpickler",
    "UnsafePickleError",
]

IMAGE_SHAPE = (32, 32, 3)
_ROW_LEN = 3 * 32 * 32


@dataclasses.dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR data set lives and how its files are checked.

    Attributes
    ----------
    name : str
        Name used in messages (``"CIFAR-10"``).
    folder : str
        Sub-folder of the data root (``"cifar10"``).
    archive : str
        Archive file name (``"cifar-10-python.tar.gz"``).
    url : str
        Download URL of the archive.
    md5s : tuple of str
        Accepted MD5s of the archive; empty means no check.
    extracted : str
        Top folder inside the archive, and the name of an extracted copy
        (``"cifar-10-batches-py"``).
    splits : mapping of str to tuple of str
        Split name -> batch files, in the order their images are returned.
    meta : str
        File holding the class names (``"batches.meta"``).
    member_md5s : mapping of str to tuple of str
        Accepted MD5s of each file of an extracted copy (the archive's MD5
        already covers its members). A file not listed is not checked.
    """

    name: str
    folder: str
    archive: str
    url: str
    md5s: tuple[str, ...]
    extracted: str
    splits: Mapping[str, tuple[str, ...]]
    meta: str
    member_md5s: Mapping[str, tuple[str, ...]]


#: CIFAR-10. Besides the official archive (md5 c58f30108f718f92721af3b95e74349a),
#: the reconstruction shipped in the project's shared data folder is accepted by
#: its recorded md5 (9846885ed2c4add749b4b474ffa52eb6): same images, labels,
#: file names and file format, but another image order within and across the
#: five training batches and in the test batch (see shared/data/README.md,
#: section 2). Each member of an extracted copy is accepted by the official md5
#: or by that of the reconstruction.
CIFAR10 = CifarSpec(
    name="CIFAR-10",
    folder="cifar10",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5s=("c58f30108f718f92721af3b95e74349a", "9846885ed2c4add749b4b474ffa52eb6"),
    extracted="cifar-10-batches-py",
    splits={
        "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test": ("test_batch",),
    },
    meta="batches.meta",
    member_md5s={
        "data_batch_1": ("c99cafc152244af753f735de768cd75f", "9ddf3af552cb00a70c452383d553efed"),
        "data_batch_2": ("d4bba439e000b95fd0a9bffe97cbabec", "d8f5727704911d3b5681bc0f26a982d8"),
        "data_batch_3": ("54ebc095f3ab1f0389bbae665268c751", "26aad77b8b67a1f74058f21d6b6c526b"),
        "data_batch_4": ("634d18415352ddfa80567beed471001a", "9e5af9288ef505c59445c74144c81880"),
        "data_batch_5": ("482c414d41f54cd18b22e5b47cb7c3cb", "7eb57ca69f00a10b6bd566106de4d166"),
        "test_batch": ("40351d587109b95175f43aff81a1287e", "fc123a2c488e0a7b9922bcb350fccb7d"),
        "batches.meta": ("5ff9c542aee3614f3951f8cda6e48888",),
    },
)

#: CIFAR-100 (official archive md5 eb9058c3a382ffc7106e4002c42a8d85).
CIFAR100 = CifarSpec(
    name="CIFAR-100",
    folder="cifar100",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5s=("eb9058c3a382ffc7106e4002c42a8d85",),
    extracted="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    meta="meta",
    member_md5s={
        "train": ("16019d7e3df5f24257cddd939b257f8d",),
        "test": ("f0ef6b0ae62326f3e7ffdfab6717acfc",),
        "meta": ("7973b15100ade9c7d40fb424638fde48",),
    },
)

# CIFAR-100 label type -> number of classes.
_CIFAR100_LABEL_TYPES = {"fine": 100, "coarse": 20}


# ---------------------------------------------------------------- restricted unpickling


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle refers to a global that :class:`RestrictedUnpickler` does not allow.

    A ``ValueError`` too, like every other bad-file error of the loaders.
    """


_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1");
    # any other codec is not needed to read data and is refused.
    if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1:
        raise UnsafePickleError(f"_codecs.encode is only allowed with the latin1 codec, got {encoding!r}")
    return codecs.encode(obj, "latin1", errors)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals a pickled numpy array needs.

    Allowed: ``numpy.core.multiarray._reconstruct`` (written by numpy < 2 and
    by the official CIFAR files) and ``numpy._core.multiarray._reconstruct``
    (numpy >= 2), ``numpy.ndarray``, ``numpy.dtype``, and ``_codecs.encode``
    restricted to latin-1 (how Python 3 writes ``bytes`` at protocol 2). Any
    other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`UnsafePickleError` before it is called. Plain containers,
    strings and numbers need no global and load as usual.

    Parameters
    ----------
    file : binary file object
        The pickle stream.
    where : str, optional
        What is being read, for error messages (e.g. a member name).
    **kwargs
        Passed to :class:`pickle.Unpickler` (e.g. ``encoding="bytes"``).
    """

    # Resolved to this interpreter's objects rather than imported by name, so that
    # the deprecated numpy.core module is never imported.
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, file: IO[bytes], where: str = "pickle", **kwargs: Any):
        super().__init__(file, **kwargs)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.where}: refusing to load global {module}.{name}: a CIFAR batch "
                f"holds only numpy arrays, lists and strings, and resolving other "
                f"globals could run arbitrary code. The file is not an official "
                f"CIFAR file."
            ) from None


def _unpickle(f: IO[bytes], where: str) -> dict[str, Any]:
    """Unpickle one batch as a dict with ``str`` keys; ``ValueError`` if not possible."""
    try:
        # encoding="bytes": the official files are Python 2 pickles whose str
        # values are 8-bit strings; decoding them as text would fail on the array data.
        obj = RestrictedUnpickler(f, where=where, encoding="bytes").load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside pickle/numpy/gzip means a bad file
        raise ValueError(f"{where}: cannot unpickle: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles give bytes keys, pickles written by Python 3 str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# ---------------------------------------------------------------- reading batches


def _read_archive(path: Path, top: str, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Unpickle the members ``top/<name>`` of a ``.tar.gz``, in one forward pass."""
    wanted = {f"{top}/{n}": n for n in names}
    out: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            # Iterating instead of getmember(): a gzip stream seeks backwards only by
            # decompressing again from the start, and the archive is ~170 MB.
            for member in tf:
                name = wanted.get(posixpath.normpath(member.name))
                if name is None or name in out:
                    continue
                where = f"{member.name} in {path}"
                f = tf.extractfile(member)
                if f is None:
                    raise ValueError(f"{where}: not a regular file")
                with f:
                    out[name] = _unpickle(f, where)
                if len(out) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"{path.name}: cannot read {path} as a .tar.gz archive: {type(e).__name__}: {e}"
        ) from e
    missing = [m for m, n in wanted.items() if n not in out]
    if missing:
        raise ValueError(
            f"{path.name}: member(s) {', '.join(missing)} not found in {path}; "
            f"the archive is incomplete or not the official python-version archive."
        )
    return out


def _read_extracted(folder: Path, names: Iterable[str], spec: CifarSpec) -> dict[str, dict[str, Any]]:
    """Unpickle files of an extracted copy, each checked against ``spec.member_md5s``."""
    out = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{name} not found in the extracted folder {folder}; extract the official "
                f"{spec.archive} again, or delete the folder and put the archive in {folder.parent}."
            )
        check_md5(
            path,
            spec.member_md5s.get(name, ()),
            advice=f"extract the official {spec.archive} again, or delete {folder} "
                   f"and put the archive in {folder.parent}.",
        )
        with open(path, "rb") as f:
            out[name] = _unpickle(f, str(path))
    return out


def _read_files(spec: CifarSpec, root: str | os.PathLike | None, names: list[str],
                download: bool) -> tuple[dict[str, dict], str]:
    """Unpickle ``names`` from the archive or, without one, an extracted copy.

    Returns the dicts by name and a prefix naming their source for messages.
    """
    folder = data_home(root, spec.folder, files=[spec.archive], dirs=[spec.extracted])
    archive, extracted = folder / spec.archive, folder / spec.extracted
    # The archive wins when both are there: its single md5 covers every member.
    if not archive.is_file() and extracted.is_dir():
        return _read_extracted(extracted, names, spec), f"{extracted}/"
    path = fetch(spec.archive, folder, spec.url, spec.md5s, download=download)
    return _read_archive(path, spec.extracted, names), f"{path}: {spec.extracted}/"


def _batch_arrays(batch: dict[str, Any], label_key: str, n_classes: int, where: str):
    """Check one batch; return its images (n, 32, 32, 3) and labels (n,) int64."""
    for key in ("data", label_key):
        if key not in batch:
            raise ValueError(f"{where}: no {key!r} entry (entries: {', '.join(map(repr, batch))})")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _ROW_LEN):
        desc = (f"shape {data.shape} and dtype {data.dtype}" if isinstance(data, np.ndarray)
                else f"type {type(data).__name__}")
        raise ValueError(f"{where}: 'data' has {desc}, expected a uint8 array of shape (n, {_ROW_LEN})")
    try:
        labels = np.asarray(batch[label_key])
    except ValueError as e:  # e.g. a ragged list
        raise ValueError(f"{where}: {label_key!r} is not a list of ints: {e}") from e
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(
            f"{where}: {label_key!r} has shape {labels.shape} and dtype {labels.dtype}, "
            f"expected {data.shape[0]} ints to match 'data'"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)][0]
        raise ValueError(f"{where}: {label_key!r} holds {int(bad)}, out of range 0-{n_classes - 1}")
    # Rows are channel-major (R plane, G plane, B plane); images are returned channels-last.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _class_names(meta: dict[str, Any], key: str, n_classes: int, where: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != n_classes \
            or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{where}: {key!r} is not a list of {n_classes} class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _load(spec: CifarSpec, root, split, download: bool, label_key: str, n_classes: int,
          names_key: str, return_names: bool):
    """Shared body of the loaders: images (n, 32, 32, 3), labels (n,) [, names]."""
    if not isinstance(split, str) or split not in spec.splits:
        raise ValueError(f"unknown {spec.name} split {split!r}; valid values: 'train', 'test'")
    batch_names = list(spec.splits[split])
    files, source = _read_files(spec, root, batch_names + ([spec.meta] if return_names else []), download)

    parts = [_batch_arrays(files[b], label_key, n_classes, source + b) for b in batch_names]
    n = sum(len(y) for _, y in parts)
    images = np.empty((n,) + IMAGE_SHAPE, dtype=np.uint8)
    start = 0
    for x, _ in parts:
        images[start:start + len(x)] = x
        start += len(x)
    labels = np.concatenate([y for _, y in parts])
    if return_names:
        return images, labels, _class_names(files[spec.meta], names_key, n_classes, source + spec.meta)
    return images, labels


# ---------------------------------------------------------------- public loaders


def load_cifar10(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    return_names: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[str]]:
    """Load CIFAR-10 (32x32 colour images of 10 classes).

    Parameters
    ----------
    root : str or path-like, optional
        Data root holding a ``cifar10/`` folder, or a folder that directly
        holds ``cifar-10-python.tar.gz`` or the extracted
        ``cifar-10-batches-py/``. Inside the folder the archive is used if
        present, else the extracted copy. Default: ``$SMT_DATA/cifar10`` if
        ``SMT_DATA`` is set, else ``~/.cache/smt/cifar10``.
    split : {"train", "test"}, default "train"
        ``"train"`` is ``data_batch_1`` to ``data_batch_5`` in that order,
        ``"test"`` is ``test_batch``.
    download : bool, default True
        Download the archive (about 170 MB) from
        ``https://www.cs.toronto.edu/~kriz/`` when neither it nor an
        extracted copy is found. The archive is always checked against its
        MD5: the official one, or that of the reconstruction in the project's
        shared data folder (see :data:`CIFAR10`).
    return_names : bool, default False
        Also return the class names, read from ``batches.meta``.

    Returns
    -------
    images : numpy.ndarray of uint8, shape (n, 32, 32, 3)
        RGB pixel values 0-255, channels last; n = 50000 for train, 10000
        for test.
    labels : numpy.ndarray of int64, shape (n,)
        Classes 0-9.
    names : list of str, length 10
        Only with ``return_names=True``: ``names[k]`` is the name of class
        ``k`` (``"airplane"``, ``"automobile"``, ...).

    Raises
    ------
    ValueError
        Unknown ``split``; an archive (or extracted file) whose MD5 is not an
        accepted one; a missing or malformed batch (bad pickle, wrong array
        shape or dtype, labels out of range); a pickle referring to anything
        but numpy arrays (:class:`UnsafePickleError`).
    FileNotFoundError
        No data found and ``download`` is False, or the download failed
        (then a :class:`smt.datasets._base.DownloadError`).

    Examples
    --------
    >>> from smt.datasets import load_cifar10
    >>> x, y, names = load_cifar10("/data", split="test", return_names=True)  # doctest: +SKIP
    >>> x.shape, x.dtype, y.shape, names[y[0]]                                 # doctest: +SKIP
    ((10000, 32, 32, 3), dtype('uint8'), (10000,), 'cat')
    """
    check_loader_params("load_cifar10", root=root, download=download, return_names=return_names)
    return _load(CIFAR10, root, split, download, "labels", 10, "label_names", return_names)


def load_cifar100(
    root: str | os.PathLike | None = None,
    split: str = "train",
    label_type: str = "fine",
    download: bool = True,
    return_names: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[str]]:
    """Load CIFAR-100 (32x32 colour images of 100 classes in 20 superclasses).

    Parameters
    ----------
    root : str or path-like, optional
        Data root holding a ``cifar100/`` folder, or a folder that directly
        holds ``cifar-100-python.tar.gz`` or the extracted
        ``cifar-100-python/``. Inside the folder the archive is used if
        present, else the extracted copy. Default: ``$SMT_DATA/cifar100`` if
        ``SMT_DATA`` is set, else ``~/.cache/smt/cifar100``.
    split : {"train", "test"}, default "train"
        The archive's ``train`` or ``test`` file.
    label_type : {"fine", "coarse"}, default "fine"
        ``"fine"``: the 100 classes; ``"coarse"``: the 20 superclasses.
    download : bool, default True
        Download the archive (about 160 MB) from
        ``https://www.cs.toronto.edu/~kriz/`` when neither it nor an
        extracted copy is found. The archive is always checked against the
        official MD5.
    return_names : bool, default False
        Also return the class names of ``label_type``, read from ``meta``.

    Returns
    -------
    images : numpy.ndarray of uint8, shape (n, 32, 32, 3)
        RGB pixel values 0-255, channels last; n = 50000 for train, 10000
        for test.
    labels : numpy.ndarray of int64, shape (n,)
        Classes 0-99 (fine) or 0-19 (coarse).
    names : list of str, length 100 or 20
        Only with ``return_names=True``: ``names[k]`` is the name of class ``k``.

    Raises
    ------
    ValueError
        Unknown ``split`` or ``label_type``; otherwise as :func:`load_cifar10`.
    FileNotFoundError
        As :func:`load_cifar10`.

    Examples
    --------
    >>> from smt.datasets import load_cifar100
    >>> x, y = load_cifar100("/data", split="test", label_type="coarse")  # doctest: +SKIP
    >>> x.shape, y.max()                                                  # doctest: +SKIP
    ((10000, 32, 32, 3), 19)
    """
    check_loader_params("load_cifar100", root=root, download=download, return_names=return_names)
    n_classes = _CIFAR100_LABEL_TYPES.get(label_type) if isinstance(label_type, str) else None
    if n_classes is None:
        raise ValueError(f"unknown CIFAR-100 label_type {label_type!r}; valid values: 'fine', 'coarse'")
    return _load(CIFAR100, root, split, download, f"{label_type}_labels", n_classes,
                 f"{label_type}_label_names", return_names)
