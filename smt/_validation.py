"""Checks at the public boundary, with errors that name the problem: parameters (scikit-learn's
constraint objects, one helper for every estimator and loader) and image input."""
import os
from numbers import Integral, Real

import numpy as np
import scipy.sparse
import torch
from sklearn.utils._param_validation import (  # what PCA and KMeans declare their parameters with
    Interval, InvalidParameterError, Options, StrOptions, _Constraint, make_constraint)

__all__ = ["Interval", "Options", "StrOptions", "Integral", "Real", "InvalidParameterError", "DEVICE", "PATH",
           "StrSequence", "check_params", "check_param", "as_images", "to_batch"]


class _Device(_Constraint):
    """A device torch understands: "auto", None, a ``torch.device`` or a string such as "cuda:0"."""

    def is_satisfied_by(self, val):
        if val is None or val == "auto" or isinstance(val, torch.device):
            return True
        if not isinstance(val, str):
            return False
        try:
            torch.device(val)
        except (RuntimeError, ValueError):
            return False
        return True

    def __str__(self):
        return "'auto', None, a torch.device or a device string such as 'cpu' or 'cuda:0'"


class StrSequence(_Constraint):
    """A str or a list/tuple of str."""

    def is_satisfied_by(self, val):
        return isinstance(val, str) or (isinstance(val, (list, tuple)) and all(isinstance(v, str) for v in val))

    def __str__(self):
        return "a str or a list/tuple of str"


#: Constraint lists shared by several callers.
DEVICE = [_Device()]
PATH = [str, os.PathLike, None]


def check_params(params, constraints, caller):
    """Validate parameters against scikit-learn constraint lists.

    Parameters
    ----------
    params : dict
        Name -> value; every name must have an entry in ``constraints``.
    constraints : dict
        Name -> list of constraints, as in scikit-learn's ``_parameter_constraints`` (types,
        ``Interval``, ``StrOptions``, ``Options``, ``"boolean"``, ``"random_state"``, ``None``, ...).
    caller : str
        Named in the error, e.g. ``"SMT"``.

    Raises
    ------
    InvalidParameterError
        (a ``ValueError`` and a ``TypeError``) for the first parameter that meets none of its
        constraints; the message names that parameter only, what it must be, and the value given.
        A bool is not taken for a number (``True`` is no ``n_atoms``).
    """
    for name, value in params.items():
        allowed = [c if isinstance(c, _Constraint) else make_constraint(c) for c in constraints[name]]
        is_bool = isinstance(value, (bool, np.bool_))
        if any(c.is_satisfied_by(value) for c in allowed
               if not (is_bool and isinstance(c, (Interval, Options)))):
            continue
        described = [str(c) for c in allowed if not getattr(c, "hidden", False)]
        must = described[0] if len(described) == 1 else f"{', '.join(described[:-1])} or {described[-1]}"
        raise InvalidParameterError(f"{caller}: {name} must be {must}; got {value!r}")


def check_param(name, value, constraints, caller):
    """:func:`check_params` for one parameter; returns ``value``."""
    check_params({name: value}, {name: constraints}, caller)
    return value


_FLOAT_RANGE_TOL = 1e-6

# Values per block of all_finite (64 MB of float32).
_FINITE_BLOCK = 1 << 24


def all_finite(t):
    """``torch.isfinite(t).all()`` a block of rows at a time: ``torch.isfinite`` holds ``|t|``, a
    float copy of its input (2.2 GB for 10,000 CIFAR embeddings at d 384)."""
    if t.ndim == 0:
        return bool(torch.isfinite(t))
    step = max(1, _FINITE_BLOCK // max(t[0].numel() if len(t) else 1, 1))
    return all(bool(torch.isfinite(t[i:i + step]).all()) for i in range(0, len(t), step))


def check_int(name, value, minimum, allow_none=False, caller=""):
    """``value`` as an int >= ``minimum`` (or None when ``allow_none``), else the named error."""
    constraints = [Interval(Integral, minimum, None, closed="left")] + ([None] if allow_none else [])
    check_param(name, value, constraints, caller)
    return None if value is None else int(value)


def as_images(X):
    """Validate images and return them as an array/tensor of shape (n, H, W, C).

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C), or a list of (H, W[, C]) images
        uint8 (0-255) or float (0-1); bool is read as 0/1.

    Returns
    -------
    images : ndarray or torch.Tensor of shape (n, H, W, C)
        Not copied when it need not be; pixel scaling happens per batch in :func:`to_batch`.
    """
    if scipy.sparse.issparse(X):
        raise TypeError("sparse input is not supported: SMT takes dense images of shape (n, H, W[, C])")
    if isinstance(X, (list, tuple)):
        X = _stack_list(X)
    if isinstance(X, torch.Tensor):
        if X.is_meta:
            raise ValueError("images on torch's meta device hold no pixels: pass a tensor with data")
        X = X.detach()  # no autograd graph through the fit (and numpy() works on the pixels)
    else:
        X = np.asarray(X)
        if np.iscomplexobj(X):
            raise ValueError("Complex data not supported: images must be uint8 or float")
        if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise ValueError(f"images must be numeric (uint8 or float), got dtype {X.dtype}")
        if X.dtype.kind == "f" and X.dtype.itemsize > 8:
            raise ValueError(f"images of dtype {X.dtype} are not supported (torch has no such type); "
                             f"convert them with X.astype(np.float64)")
    dtype_name = str(X.dtype).replace("torch.", "")
    if X.ndim == 2:
        raise ValueError(
            f"SMT takes images of shape (n, H, W) or (n, H, W, C), got a 2-D array of shape {tuple(X.shape)}; "
            f"reshape flat images first, e.g. X.reshape(len(X), H, W)")
    if X.ndim not in (3, 4):
        raise ValueError(f"SMT takes images of shape (n, H, W) or (n, H, W, C), got ndim={X.ndim} "
                         f"with shape {tuple(X.shape)}")
    if X.ndim == 3:
        X = X[..., None]
    if X.shape[1] in (1, 3, 4) and X.shape[-1] not in (1, 3, 4) and X.shape[-1] > 4:
        raise ValueError(f"images of shape {tuple(X.shape)} look channels-first (n, C, H, W); SMT takes "
                         f"channels-last (n, H, W, C): transpose with X.permute(0, 2, 3, 1) or "
                         f"X.transpose(0, 2, 3, 1)")
    if X.shape[0] == 0:
        raise ValueError(f"found 0 images (shape {tuple(X.shape)}); at least 1 is required")
    is_uint8 = dtype_name == "uint8"
    is_bool = dtype_name == "bool"
    is_float = dtype_name.startswith("float") or dtype_name == "bfloat16"
    if not (is_uint8 or is_bool or is_float):
        raise ValueError(f"images must be uint8 (0-255) or float (0-1), got dtype {dtype_name}; "
                         f"convert integer pixels with X.astype(np.uint8) or X / 255.0")
    if is_float:
        lib = torch if isinstance(X, torch.Tensor) else np
        if not (all_finite(X) if lib is torch else bool(np.isfinite(X).all())):
            what = "NaN" if bool(lib.isnan(X).any()) else "infinity"
            raise ValueError(f"images contain {what}")
        lo, hi = float(X.min()), float(X.max())
        if lo < -_FLOAT_RANGE_TOL or hi > 1 + _FLOAT_RANGE_TOL:
            raise ValueError(f"float images must lie in [0, 1] (the whitening epsilon is set on that scale), "
                             f"got values in [{lo:g}, {hi:g}]; divide 0-255 pixels by 255")
    return X


def _stack_list(images):
    if len(images) == 0:
        raise ValueError("found 0 images; at least 1 is required")
    arrays = [img.detach() if isinstance(img, torch.Tensor) else np.asarray(img) for img in images]
    is_tensor = [isinstance(a, torch.Tensor) for a in arrays]
    if any(is_tensor) and not all(is_tensor):
        # A mixed list is taken as numpy images (its embeddings come back as numpy).
        arrays = [a.cpu().float().numpy() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16
                  else a.cpu().numpy() if isinstance(a, torch.Tensor) else a for a in arrays]
    first = tuple(arrays[0].shape)
    for i, a in enumerate(arrays):
        if tuple(a.shape) != first:
            raise ValueError(f"images of mixed sizes: image 0 has shape {first}, image {i} has shape "
                             f"{tuple(a.shape)}; resize or crop them to one size")
    dtypes = {str(a.dtype).replace("torch.", "") for a in arrays}
    if "uint8" in dtypes and any(d.startswith(("float", "bfloat")) for d in dtypes):
        raise ValueError(f"images of mixed pixel scales ({', '.join(sorted(dtypes))}): uint8 in 0-255 and float "
                         f"in [0, 1]; convert them to one")
    if isinstance(arrays[0], torch.Tensor):
        if len({a.device for a in arrays}) > 1:
            raise ValueError("images on several devices; move them to one first")
        return torch.stack(arrays)
    return np.stack(arrays)


def to_batch(images, device):
    """Slice of validated images -> float32 tensor (n, C, H, W) in [0, 1] on ``device``."""
    if not isinstance(images, torch.Tensor):
        images = np.ascontiguousarray(images)
        # torch cannot wrap a read-only buffer (e.g. a memmap): copy this batch only.
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    t = images
    t = t.to(device)
    scale = 255.0 if t.dtype == torch.uint8 else 1.0
    t = t.to(torch.float32)
    if scale != 1.0:
        t = t / scale
    return t.permute(0, 3, 1, 2).contiguous()
