"""Data augmentations of the SMT recipes: horizontal mirrors and gray copies (docs/algorithm.md
§2.8, §2.9).

Mirrors are a data utility: the code lineage fits on the training images plus their mirrors and
keeps the mirrors (with their labels) in the kNN reference set. Gray copies can be added the same
way (:func:`add_gray_copies`: fit and reference set), or inside :class:`smt.SMT`
(``grayscale_augmentation=``: fit only), where in the paired variant a colour image and its gray
copy reach the context statistics together. On CIFAR-10 the data-utility reading measured best
of the readings at 10k images, but none reproduces the paper's gain (benchmarks/RESULTS.md,
"grayscale augmentation").
"""
import numpy as np
import torch

# ITU-R 601 luma, as torchvision's Grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def add_mirrors(X, y=None):
    """Append the left-right mirror of every image.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n, H, W) or (n, H, W, C)
    y : array-like of shape (n,), optional

    Returns
    -------
    X2 : same type as X, of shape (2n, ...)
        ``X`` followed by its mirrors (image ``n + i`` mirrors image ``i``).
    y2 : ndarray of shape (2n,)
        Only when ``y`` is given: the labels, twice.
    """
    if X.ndim not in (3, 4):
        raise ValueError(f"add_mirrors takes images of shape (n, H, W) or (n, H, W, C), got {tuple(X.shape)}")
    return _append(X, X.flip(2) if isinstance(X, torch.Tensor) else np.asarray(X)[:, :, ::-1], y)


def add_gray_copies(X, y=None):
    """Append the gray copy of every RGB image (:func:`to_grayscale`), as a training-set augmentation.

    Unlike ``SMT(grayscale_augmentation=...)``, which fits on gray copies but leaves them out of
    whatever the caller uses as reference set, the gray copies here are ordinary images: they are
    fitted as extra images and, with their labels, join the kNN reference set, as the mirrors of
    :func:`add_mirrors` do.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n, H, W, 3)
    y : array-like of shape (n,), optional

    Returns
    -------
    X2 : same type as X, of shape (2n, H, W, 3)
        ``X`` followed by its gray copies (image ``n + i`` is the gray copy of image ``i``).
    y2 : ndarray of shape (2n,)
        Only when ``y`` is given: the labels, twice.

    Examples
    --------
    >>> X = np.zeros((2, 1, 1, 3), dtype=np.uint8); X[..., 0] = 255  # two red pixels
    >>> X2, y2 = add_gray_copies(X, [3, 5])
    >>> X2.shape, X2[2, 0, 0].tolist(), y2.tolist()
    ((4, 1, 1, 3), [76, 76, 76], [3, 5, 3, 5])
    """
    if isinstance(X, torch.Tensor):
        return _append(X, torch.as_tensor(to_grayscale(X.cpu().numpy()), device=X.device), y)
    return _append(X, to_grayscale(X), y)


def _append(X, copies, y):
    """``X`` followed by ``copies`` (one per image), and the labels twice when ``y`` is given."""
    out = torch.cat([X, copies]) if isinstance(X, torch.Tensor) else np.concatenate([np.asarray(X), copies])
    if y is None:
        return out
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} images but y has {len(y)} labels")
    return out, np.concatenate([y, y])


def to_grayscale(X):
    """Gray copy ``0.299 R + 0.587 G + 0.114 B`` of RGB images, replicated to 3 channels.

    Parameters
    ----------
    X : ndarray of shape (n, H, W, 3), uint8 or float

    Returns
    -------
    ndarray of shape (n, H, W, 3), same dtype (uint8 is rounded)
    """
    X = np.asarray(X)
    if X.ndim != 4 or X.shape[-1] != 3:
        raise ValueError(f"to_grayscale takes RGB images of shape (n, H, W, 3), got {X.shape}")
    gray = X.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    if X.dtype == np.uint8:
        gray = np.clip(np.rint(gray), 0, 255)
    return np.repeat(gray[..., None], 3, axis=-1).astype(X.dtype)


def gray_views(batch):
    """An RGB batch followed by its gray copies, view-major.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, 3, H, W), float

    Returns
    -------
    torch.Tensor of shape (2n, 3, H, W)
        Image ``n + i`` is the gray copy of image ``i``.
    """
    w = torch.tensor(LUMA_WEIGHTS, dtype=batch.dtype, device=batch.device)
    gray = torch.einsum("nchw,c->nhw", batch, w)[:, None].expand(-1, 3, -1, -1)
    return torch.cat([batch, gray])
