"""Data augmentations of the SMT recipes: horizontal mirrors and gray copies (docs/algorithm.md
§2.8, §2.9).

Mirrors are a data utility: the code lineage fits on the training images plus their mirrors and
keeps the mirrors (with their labels) in the kNN reference set. Gray copies can be added the same
way (:func:`add_gray_copies`: fit and reference set), or inside :class:`smt.SMT`
(``grayscale_augmentation=``: fit only), where in the paired variant a colour image and its gray
copy reach the context statistics together. None of these readings gains on CIFAR-10. The one
that does is :class:`GrayView`: a model of its own for the gray copies, beside the colour model
(docs/algorithm.md §7.6).
"""
import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

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


class GrayView(TransformerMixin, BaseEstimator):
    """A model of the gray view: ``estimator`` fitted on and applied to the luma of RGB images.

    A reading of the paper's grayscale augmentation in which the gray copies get a model of their
    own (its own whitening, dictionary and spectral embedding, on one-channel patches) instead of
    joining the colour model's images or context. Placed beside a colour ``SMT`` in scikit-learn's
    ``FeatureUnion``, with ``normalize_output=True`` on both, the kNN's cosine becomes the mean of a
    colour cosine and a colour-blind one (docs/algorithm.md §7.6)::

        from sklearn.pipeline import make_union
        model = make_union(SMT(threshold=0.3, normalize_output=True),
                           GrayView(SMT(threshold=0.45, normalize_output=True)))

    Parameters
    ----------
    estimator : SMT
        Cloned at fit; the clone is fitted on ``to_luma(X)``, images of shape (n, H, W).

    Attributes
    ----------
    estimator_ : SMT
        The fitted clone.
    n_features_out_ : int
        Its embedding size.
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y=None):
        """Fit a clone of ``estimator`` on the luma of X, of shape (n, H, W, 3)."""
        self.estimator_ = clone(self.estimator).fit(to_luma(X))
        return self

    def fit_transform(self, X, y=None):
        """Fit and embed X, of shape (n, H, W, 3), encoding every patch once (``SMT.fit_transform``)."""
        self.estimator_ = clone(self.estimator)
        return self.estimator_.fit_transform(to_luma(X))

    def fit_transform_chunks(self, X, chunk_size=5000):
        """Fit on X, of shape (n, H, W, 3), then yield its embeddings ``chunk_size`` images at a time
        (``SMT.fit_transform_chunks``)."""
        self.estimator_ = clone(self.estimator)
        yield from self.estimator_.fit_transform_chunks(to_luma(X), chunk_size=chunk_size)

    def transform(self, X):
        """Embed RGB images X of shape (n, H, W, 3) -> (n, n_features_out_), float32."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.transform(to_luma(X))

    @property
    def n_features_out_(self):
        check_is_fitted(self, "estimator_")
        return self.estimator_.n_features_out_


def _append(X, copies, y):
    """``X`` followed by ``copies`` (one per image), and the labels twice when ``y`` is given."""
    out = torch.cat([X, copies]) if isinstance(X, torch.Tensor) else np.concatenate([np.asarray(X), copies])
    if y is None:
        return out
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} images but y has {len(y)} labels")
    return out, np.concatenate([y, y])


def to_luma(X):
    """The luma ``0.299 R + 0.587 G + 0.114 B`` of RGB images, one channel.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n, H, W, 3), uint8 or float

    Returns
    -------
    ndarray or torch.Tensor of shape (n, H, W)
        Same type, device and dtype as X (uint8 is rounded).

    Examples
    --------
    >>> X = np.zeros((2, 1, 1, 3), dtype=np.uint8); X[..., 0] = 255  # two red pixels
    >>> L = to_luma(X)
    >>> L.shape, L.dtype, L[0, 0, 0]
    ((2, 1, 1), dtype('uint8'), np.uint8(76))
    """
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
    if X.ndim != 4 or X.shape[-1] != 3:
        raise ValueError(f"gray copies are made of RGB images of shape (n, H, W, 3), got {tuple(X.shape)}")
    if isinstance(X, torch.Tensor):
        gray = X.float() @ torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=X.device)
        if X.dtype == torch.uint8:
            gray = gray.round().clamp(0, 255)
        return gray.to(X.dtype)
    gray = X.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    if X.dtype == np.uint8:
        gray = np.clip(np.rint(gray), 0, 255)
    return gray.astype(X.dtype)


def to_grayscale(X):
    """Gray copy ``0.299 R + 0.587 G + 0.114 B`` of RGB images, replicated to 3 channels.

    Parameters
    ----------
    X : ndarray of shape (n, H, W, 3), uint8 or float

    Returns
    -------
    ndarray of shape (n, H, W, 3), same dtype (uint8 is rounded)
    """
    return np.repeat(to_luma(np.asarray(X))[..., None], 3, axis=-1)


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
