"""Checks of image input at the public boundary, with errors that name the problem."""
import numpy as np
import scipy.sparse
import torch

_FLOAT_RANGE_TOL = 1e-6


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
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
        if np.iscomplexobj(X):
            raise ValueError("Complex data not supported: images must be uint8 or float")
        if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise ValueError(f"images must be numeric (uint8 or float), got dtype {X.dtype}")
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
        finite = lib.isfinite(X)
        if not bool(finite.all()):
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
    arrays = [img if isinstance(img, torch.Tensor) else np.asarray(img) for img in images]
    first = tuple(arrays[0].shape)
    for i, a in enumerate(arrays):
        if tuple(a.shape) != first:
            raise ValueError(f"images of mixed sizes: image 0 has shape {first}, image {i} has shape "
                             f"{tuple(a.shape)}; resize or crop them to one size")
    if isinstance(arrays[0], torch.Tensor):
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
