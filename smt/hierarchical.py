"""Two SMT layers: a second SMT fitted on the first layer's pooled embedding maps.

The hierarchical SMT of Chen, Paiton and Olshausen (NeurIPS 2018): the first layer's output at
each pooled location is a unit d-vector, so an image's first-layer output is a map of shape
(H_p, W_p, d), itself an image with d channels. The second layer codes small neighbourhoods of
that map against its own dictionary and embeds the codes with its own spectral embedding, so it
sees the co-occurrence of first-layer features over a wider field (on CIFAR-10 with the default
6x6 patches, pooling 4 / 2 and a 3x3 second-layer patch: 13x13 pixels).
"""
import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from smt._io import ModelFileError, meta_field, read_model, save_npz, saved_params
from smt._validation import Integral, Interval, Real, StrOptions, as_images, check_params
from smt.checkpoint import prefixed, unprefixed
from smt.image import SMT
from smt.patches import patch_grid_shape
from smt.pooling import pooled_grid_shape

_FORMAT_VERSION = 1
_LAYERS = ("first", "second")


def default_second_layer():
    """The second layer's defaults: 3x3 neighbourhoods of the first layer's map, their level kept
    (a map's level is its features), K 2048, threshold 0.1, d 128, pooling 4 / 2.

    Whitened 3x3 patches of a d 128 map have 1152 dimensions, where cosines run lower than in the
    108 of a 6x6 RGB patch: at t 0.3 84 % of the second layer's patches got no atom on CIFAR-10,
    at t 0.1 none, with 23 active atoms per patch (the first layer's density at K 1024;
    measured without labels, benchmarks/RESULTS.md, "Stop 18")."""
    return SMT(patch_size=3, center_patches=False, n_atoms=2048, threshold=0.1, n_components=128, pool_size=4,
               pool_stride=2)


class HierarchicalSMT(TransformerMixin, BaseEstimator):
    """Two stacked SMT layers (Chen, Paiton and Olshausen, 2018).

    ``fit`` fits the first layer on the images, then the second on the first layer's pooled
    maps, both in one streaming pass each: the maps are made ``chunk_size`` images at a time and
    go to the second layer's ``partial_fit`` (which gives exactly the model of a fit on all of
    them), the first ``second.front_end_images`` maps in one call, so that its front end is fitted
    once; those maps are held until then (at d 384 on CIFAR-10, 2.2 GB for 10,000).

    A first-layer map has values in [-1, 1] (unit pooled vectors); the second layer reads it as
    an image with d channels and values ``(map + 1) / 2`` in [0, 1], the range SMT takes.

    Parameters
    ----------
    first : SMT or None, default=None
        The first layer, cloned at fit. None: ``SMT()``.
    second : SMT or None, default=None
        The second layer, cloned at fit; its patch grid and pooling must fit the first layer's
        pooled grid. None: :func:`default_second_layer`.
    output : {"both", "second"}, default="both"
        The first layer's embedding followed by the second's, or the second's alone.
    second_weight : float, default=1.0
        With ``output="both"``: each layer's part is scaled to unit norm and the second's then
        by this weight, so a cosine kNN weighs the two layers' similarities 1 : weight^2.
    chunk_size : int, default=2000
        Images whose first-layer maps are held at once (CIFAR-10 at d 384: 221 KB per image).
    random_state : int or None, default=None
        When given, seeds both layers (their own ``random_state`` is then ignored).

    Attributes
    ----------
    first_, second_ : SMT
        The fitted layers.
    map_shape_ : tuple (H_p, W_p, d)
        A first-layer map.
    n_features_out_ : int
        With the ``output`` of the last fit.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X = load_digits().images / 16.0
    >>> first = SMT(patch_size=3, n_atoms=64, coding="one_sparse", n_components=8, pool_size=2,
    ...             pool_stride=1)
    >>> second = SMT(patch_size=2, center_patches=False, n_atoms=32, coding="one_sparse",
    ...              n_components=4, pool_size=2, pool_stride=1)
    >>> HierarchicalSMT(first, second, random_state=0).fit_transform(X).shape
    (1797, 236)
    """

    _parameter_constraints = {
        "first": [SMT, None],
        "second": [SMT, None],
        "output": [StrOptions({"both", "second"})],
        "second_weight": [Interval(Real, 0, None, closed="left")],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(self, first=None, second=None, *, output="both", second_weight=1.0, chunk_size=2000,
                 random_state=None):
        self.first = first
        self.second = second
        self.output = output
        self.second_weight = second_weight
        self.chunk_size = chunk_size
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit the first layer on X, then the second on the first layer's maps of X.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
            uint8 in 0-255 or float in [0, 1].
        y : ignored

        Returns
        -------
        self
        """
        check_params(self.get_params(deep=False), self._parameter_constraints, type(self).__name__)
        images = as_images(X)
        layers = [clone(SMT() if self.first is None else self.first),
                  clone(default_second_layer() if self.second is None else self.second)]
        if self.random_state is not None:
            for layer in layers:
                layer.set_params(random_state=self.random_state)
        first, second = layers
        self._check_layers(first, second, images.shape[1:3])
        # Every chunk's partial_fit adds to the second layer's statistics: they are dropped, if
        # asked, only after the last chunk.
        keep = second.keep_statistics
        second.set_params(keep_statistics=True)
        # The second layer's front end is fitted once, on its first front_end_images maps handed
        # over in one partial_fit call (smaller calls would refit it and recount the kept maps
        # every time); the later chunks only add statistics.
        held, n_held = None, 0
        for z in first.fit_transform_chunks(images, chunk_size=self.chunk_size):
            maps = self._maps(z, first)
            if held is None and n_held:
                second.partial_fit(maps)
                continue
            if held is None:
                held = np.empty((min(len(images), second.front_end_images + self.chunk_size - 1),) + maps.shape[1:],
                                np.float32)
            held[n_held:n_held + len(maps)] = maps
            n_held += len(maps)
            if n_held >= min(second.front_end_images, len(images)):
                second.partial_fit(held[:n_held])
                held = None
        if not keep:
            second.set_params(keep_statistics=False)._drop_statistics()
        self.first_, self.second_ = first, second
        self._set_shape()
        return self

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)`` (the first layer encodes X once for each).

        Returns
        -------
        Z : ndarray of shape (n, n_features_out_), float32
        """
        return self.fit(X).transform(X)

    def transform(self, X):
        """Embed images through both layers, ``chunk_size`` images at a time.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
            Same H, W and C as at fit.

        Returns
        -------
        Z : ndarray of shape (n, n_features_out_), float32
        """
        check_is_fitted(self, "second_")
        check_params(self.get_params(deep=False), self._parameter_constraints, type(self).__name__)
        images = as_images(X)
        width = self.second_.n_features_out_ + (0 if self.output == "second" else self.first_.n_features_out_)
        out = np.empty((len(images), width), np.float32)
        for i in range(0, len(images), self.chunk_size):
            z1 = self.first_.transform(images[i:i + self.chunk_size])
            z1 = z1.cpu().numpy() if isinstance(z1, torch.Tensor) else z1
            z2 = self.second_.transform(self._maps(z1, self.first_))
            if self.output == "second":
                out[i:i + len(z1)] = z2
                continue
            # Each layer's part at unit norm (an all-zero part stays zero).
            n1 = np.linalg.norm(z1, axis=1, keepdims=True)
            n2 = np.linalg.norm(z2, axis=1, keepdims=True)
            out[i:i + len(z1), :z1.shape[1]] = z1 / np.where(n1 > 0, n1, 1)
            out[i:i + len(z1), z1.shape[1]:] = self.second_weight * z2 / np.where(n2 > 0, n2, 1)
        return out

    def save(self, path):
        """Save both layers and the parameters to one ``.npz`` file (arrays and JSON, no pickle)."""
        check_is_fitted(self, "second_")
        meta = {"kind": "HierarchicalSMT", "format_version": _FORMAT_VERSION,
                "params": {k: v for k, v in self.get_params(deep=False).items() if k not in _LAYERS}}
        arrays = {}
        for name in _LAYERS:
            layer_meta, layer_arrays = getattr(self, name + "_")._model_file()
            meta[name] = layer_meta
            arrays.update(prefixed(name, layer_arrays))
        save_npz(path, meta, arrays)

    @classmethod
    def load(cls, path, device=None):
        """Load a model written by :meth:`save`; ``device`` as in :meth:`SMT.load`.

        Raises
        ------
        ModelFileError
            (a ``ValueError``) naming the file and the problem.
        """
        names = [k for k in cls().get_params(deep=False) if k not in _LAYERS]
        meta, arrays, params = read_model(path, "HierarchicalSMT", _FORMAT_VERSION, names)
        model = cls()
        try:
            model.set_params(**params)
            check_params(model.get_params(deep=False), cls._parameter_constraints, cls.__name__)
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: not a usable HierarchicalSMT model: {e}") from e
        for name in _LAYERS:
            layer_meta = meta_field(meta, name, dict, path)
            layer_params = saved_params(layer_meta, "SMT", SMT().get_params(), path)
            layer = SMT._from_model_file(layer_meta, unprefixed(name, arrays), layer_params,
                                         f"{path} ({name} layer)", device)
            setattr(model, name + "_", layer)
            setattr(model, name, clone(layer))
        try:
            model._check_layers(model.first_, model.second_, model.first_.image_shape_[:2])
        except ValueError as e:
            raise ModelFileError(f"{path}: not a usable HierarchicalSMT model: {e}") from e
        if tuple(model.second_.image_shape_) != model._map_shape(model.first_):
            raise ModelFileError(f"{path}: the second layer was fitted on maps of shape "
                                 f"{tuple(model.second_.image_shape_)}, the first layer makes "
                                 f"{model._map_shape(model.first_)}")
        model._set_shape()
        return model

    def _check_layers(self, first, second, image_hw):
        """The second layer's patch and pooling fit the first layer's pooled grid of these images."""
        h, w = image_hw
        grid = patch_grid_shape(h, w, first.patch_size)
        hp, wp = (pooled_grid_shape(*grid, first.pool_size, first.pool_stride) if min(grid) >= first.pool_size
                  else (0, 0))
        need = second.patch_size + second.pool_size - 1
        if min(hp, wp) < need:
            raise ValueError(f"HierarchicalSMT: the first layer turns {h}x{w} images into {hp}x{wp} maps; the "
                             f"second layer's {second.patch_size}x{second.patch_size} patches pooled by "
                             f"{second.pool_size} need maps of at least {need}x{need}: lower the second "
                             f"layer's patch_size or pool_size, or the first layer's pool_stride")
        if second.grayscale_augmentation is not None:
            raise ValueError("HierarchicalSMT: the second layer's input is a feature map, not RGB: "
                             "set its grayscale_augmentation to None")

    @staticmethod
    def _map_shape(first):
        hp, wp = pooled_grid_shape(*first.patch_grid_shape_, first.pool_size, first.pool_stride)
        return hp, wp, first.n_components

    def _maps(self, z, first):
        """First-layer embeddings (n, d * H_p * W_p), in (d, H_p, W_p) order, as second-layer
        images (n, H_p, W_p, d) in [0, 1]."""
        hp, wp, d = self._map_shape(first)
        maps = np.asarray(z, dtype=np.float32).reshape(len(z), d, hp, wp).transpose(0, 2, 3, 1)
        # Pooled vectors have unit norm, so |map| <= 1 up to rounding.
        return np.clip((maps + 1) / 2, 0, 1)

    def _set_shape(self):
        self.map_shape_ = self._map_shape(self.first_)
        n2 = self.second_.n_features_out_
        self.n_features_out_ = n2 if self.output == "second" else self.first_.n_features_out_ + n2
