"""Model files: arrays plus a JSON header in one ``.npz``, written atomically, loaded without pickle.

A file that cannot be used (missing header, damaged, truncated, empty, of another kind) raises
:class:`ModelFileError`, whose message names the file and the problem.
"""
import json
import numbers
import os
from pathlib import Path

import numpy as np
import torch

_ZIP_MAGIC = b"PK\x03\x04"


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be used; the message names the file and the problem."""


def jsonable(value):
    """A parameter value as JSON: numpy scalars as Python numbers, tuples as lists, devices and
    paths as strings, a ``RandomState`` as its full state (restored by :func:`from_jsonable`)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (torch.device, os.PathLike)):
        return str(value)
    if isinstance(value, np.random.RandomState):
        name, keys, pos, has_gauss, cached = value.get_state(legacy=True)
        return {"RandomState": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def from_jsonable(value):
    """Inverse of :func:`jsonable` for the values it changes in kind (a ``RandomState``)."""
    if isinstance(value, dict) and set(value) == {"RandomState"}:
        name, keys, pos, has_gauss, cached = value["RandomState"]
        state = np.random.RandomState()
        state.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        return state
    return value


def save_npz(path, meta, arrays):
    """Write ``arrays`` and ``meta`` (made JSON-able by :func:`jsonable`) to ``path``, via a
    temporary file and a rename: a failed save leaves the old file and no temporary file."""
    path = Path(path)
    header = json.dumps(jsonable(meta))  # before any file is made: a bad value leaves nothing behind
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(tmp, __meta__=np.array(header), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_npz(path, what="model"):
    """Read a file written by :func:`save_npz`: returns ``(meta, arrays)``.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file should be ("SMT model", "checkpoint", ...), for the error messages.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ModelFileError
        A directory, an empty, truncated, damaged (every array is checked against its CRC) or
        foreign file, or a header that is not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} file at {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a {what} file")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if not head:
        raise ModelFileError(f"{path} is empty (0 bytes): not a {what} file (an interrupted copy?)")
    if head != _ZIP_MAGIC:
        raise ModelFileError(f"{path} is not a {what} file: it is not an .npz archive (no zip header)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__meta__" not in data.files:
                raise ModelFileError(f"{path} is an .npz archive without the header of a {what} file "
                                     f"(arrays: {', '.join(data.files[:8]) or 'none'})")
            meta = json.loads(str(data["__meta__"]))
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, numpy and json each fail in their own way
        raise ModelFileError(f"{path} is damaged or truncated and cannot be read as a {what} file "
                             f"({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: the header of a {what} file must be a JSON object, got "
                             f"{type(meta).__name__}")
    return meta, arrays


_LOADERS = {"SMT": "SMT.load", "SMTWordEmbedding": "SMTWordEmbedding.load",
            "HierarchicalSMT": "HierarchicalSMT.load",
            "SMT checkpoint": "SMT(checkpoint_path=...).fit"}
_NAMES = {"SMT": "an SMT model", "SMTWordEmbedding": "an SMTWordEmbedding model",
          "HierarchicalSMT": "a HierarchicalSMT model",
          "SMT checkpoint": "an SMT checkpoint", "unknown": "an unknown"}


def check_kind(path, meta, arrays, expected):
    """Refuse a file of another kind than ``expected`` ("SMT", "SMTWordEmbedding", "HierarchicalSMT",
    "SMT checkpoint").
    Files written before the header named their kind are told apart by their contents."""
    kind = meta.get("kind")
    if kind is None:
        kind = ("SMTWordEmbedding" if "vocabulary" in arrays else
                "SMT checkpoint" if "run" in meta else "SMT" if "components_" in arrays else "unknown")
    if kind != expected:
        use = f"; it is read by {_LOADERS[kind]}" if kind in _LOADERS else ""
        raise ModelFileError(f"{path} is {_NAMES.get(kind, repr(kind))} file, not {_NAMES[expected]} file{use}")


def read_model(path, kind, version, param_names):
    """Header, arrays and parameters of a ``kind`` model file ("SMT", "SMTWordEmbedding",
    "HierarchicalSMT").

    Refuses, naming the file: a file :func:`load_npz` cannot read, another kind of file, another
    format version, parameters the estimator does not have or cannot hold. The parameter values
    themselves are the estimator's to validate.

    Returns
    -------
    meta : dict
    arrays : dict of ndarray
    params : dict
        The saved parameters, with what :func:`jsonable` changed restored.
    """
    meta, arrays = load_npz(path, f"{kind} model")
    check_kind(path, meta, arrays, kind)
    if meta.get("format_version") != version:
        raise ModelFileError(f"{path} is not {_NAMES[kind]} file of format version {version} "
                             f"(format_version {meta.get('format_version')!r})")
    return meta, arrays, saved_params(meta, kind, param_names, path)


def saved_params(meta, kind, param_names, path):
    """The parameters in a ``kind`` header ``meta``, restored by :func:`from_jsonable`; refuses
    parameters the estimator does not have or a value that cannot be restored, naming the file."""
    saved = meta_field(meta, "params", dict, path)
    unknown = sorted(set(saved) - set(param_names))
    if unknown:
        raise ModelFileError(f"{path}: unknown {kind} parameter(s) {', '.join(unknown)}")
    params = {}
    for name, value in saved.items():
        try:
            params[name] = from_jsonable(value)
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: the saved parameter {name} is malformed ({e})") from e
    return params


def meta_field(meta, key, kind, path, what="model"):
    """``meta[key]``, checked to be of type ``kind``; a missing or malformed field names the file."""
    if key not in meta:
        raise ModelFileError(f"{path}: the {what} file's header has no {key!r} entry")
    value = meta[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelFileError(f"{path}: the {what} file's {key!r} entry is malformed: {value!r}")
    return value
