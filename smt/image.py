"""The SMT image estimator: patches -> whitening -> dictionary -> sparse codes -> spectral
embedding -> average pooling, behind the scikit-learn transformer API."""
import math
import os
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from smt import distributed
from smt._device import resolve_device, warn_emulated_bf16
from smt._io import ModelFileError, meta_field, read_model, save_npz
from smt._norm import l2_normalize
from smt._validation import (DEVICE, PATH, Integral, Interval, Options, Real, StrOptions, as_images,
                             check_param, check_params, to_batch)
from smt.augment import gray_views
from smt.checkpoint import Checkpoint, FitPosition, prefixed, unprefixed
from smt.code_store import CodeStore
from smt.coding import CODE_NORMS, CODE_VALUES, CODINGS, EMPTY_CODES, PRECISIONS, sparse_code, threshold_lists
from smt.dictionary import OnlineDictionary, incoherent_atoms, patch_keys
from smt.patches import CENTERINGS, centring, extract_patches, patch_grid_shape
from smt.pooling import pool_embeddings, pooled_grid_shape
from smt.spectral import solve_bytes, solve_embedding
from smt.statistics import ContextStatistics
from smt.whitening import Whitening

_FORMAT_VERSION = 1
# Parameters a model file does not carry: where to write and what to run on are the caller's.
_CALLER_PARAMS = ("device", "checkpoint_path")
# Parameters the fitted arrays or the output width depend on: changed after fit, they would make
# transform disagree with the model (set_params of one of them then needs a refit).
_SHAPE_PARAMS = ("patch_size", "n_atoms", "n_components", "n_skip", "pool_size", "pool_stride")
# Parameters that change neither the fitted model nor the order the data is walked in.
_RUNTIME_PARAMS = ("device", "verbose", "checkpoint_path", "checkpoint_every", "keep_statistics")
# Read after the statistics pass (the solve, the transform): a checkpoint does not depend on them,
# so one statistics pass serves every d, n_skip and pooling.
_TRANSFORM_PARAMS = ("n_components", "n_skip", "pool_size", "pool_stride", "pool_sigma", "normalize_output")
# Threshold codes this dense (mean active atoms per patch over K, and at least this many atoms) make
# the statistics cost grow with the square of the density: the fit warns. CIFAR-10 at K 8192, t 0.3:
# 115 atoms, 0.014; MNIST at the same defaults: 417 atoms, 0.051.
_DENSE_CODES = 0.03
_DENSE_MIN_ATOMS = 100
# A coding step's padded codes (indices, coefficients and their copies on the patch grid) stay
# within about this many bytes: a batch of dense codes is coded in several steps, so memory does not
# follow the width of the codes.
_CODE_BYTES = 3 << 29  # 1.5 GiB: a batch of 256 CIFAR-10 images at K 8192 in one step
_FIRST_CODE_STEP = 8  # images coded before the width of their codes is known
_MAX_DICT_EPOCHS = 1000
# Algorithm 1 walks the front-end images in groups of about this many of its batches' worth of patches.
_DICT_GROUP_BATCHES = 16


class SMT(TransformerMixin, BaseEstimator):
    """Sparse Manifold Transform of images (Chen, Yun, Ma, Olshausen, LeCun, ICLR 2023).

    One deterministic, streaming pass learns a whitening of 6x6 patches, a dictionary of unit
    atoms (online 1-sparse k-means, the paper's Algorithm 1), and a linear projection P of the
    sparse codes whose outputs vary slowly between neighbouring patches (a generalized
    eigenproblem). An image embeds as the average-pooled, normalised projections of its codes.
    Defaults are the paper's CIFAR settings as far as they are known (docs/algorithm.md §9).

    Parameters
    ----------
    patch_size : int, default=6
    center_patches : bool or {"channel", "patch", "image"}, default=True
        True (or "channel"): subtract each patch's own mean per channel, so a patch codes its
        structure and not its brightness or colour (the paper's front end). "patch": subtract the
        patch's mean over all channels, which keeps its colour. "image": subtract the image's
        mean ([A]'s whole-image context mean), which keeps the patch's brightness and colour
        relative to the image. False keeps the level: for inputs whose level is the signal, such
        as a first layer's embedding maps (:class:`smt.HierarchicalSMT`).
    n_atoms : int, default=8192
        Dictionary size K.
    coding : {"threshold", "top_k", "one_sparse"}, default="threshold"
        Sparse coding at fit and transform: every atom with cosine above ``threshold``, the
        ``n_nonzero`` best atoms, or the best atom.
    threshold : float, default=0.3
    n_nonzero : int, default=1
        Active atoms per patch for ``coding="top_k"``.
    max_active : int or None, default=None
        Cap on the active atoms per patch for ``coding="threshold"``.
    empty_code : {"zero", "argmax"}, default="zero"
        Code of a patch with no atom above the threshold.
    code_norm : {None, "l1", "l2"}, default=None
        Binary codes, or divided by the L1 / L2 norm of the binary code.
    code_values : {"binary", "similarity", "excess"}, default="binary"
        Coefficient of an active atom in the statistics and the embedding: 1, the patch-atom
        cosine, or its excess over ``threshold`` (``coding="threshold"``). Real-valued codes
        take the statistics' float path (slower than the exact counts of binary codes) and
        ``fit_transform`` encodes the training images again instead of keeping their codes.
    precision : {"float32", "bf16"}, default="float32"
        Of the encode GEMM (patch-atom similarities). ``"bf16"`` multiplies in bfloat16 and
        compares with the threshold in float32: 2-3x the float32 rate on CPUs with bf16 units, and
        codes that differ only for similarities within bfloat16's rounding of the threshold
        (benchmarks/RESULTS.md, "Speed"). Without bf16 units (an AVX2-only CPU) PyTorch emulates
        it, about 100x slower than float32, and ``fit`` and ``transform`` warn.
    n_components : int, default=384
        Embedding dimension d per patch.
    n_skip : int, default=1
        Slowest eigen-directions dropped (the constant direction of 1-sparse codes and, per the
        code lineage, colour).
    context : "image" or int, default="image"
        Neighbourhood of a patch: the whole image, or patches within this Chebyshev radius on
        the patch grid.
    order : {1, 2}, default=1
        Difference operator: first order (neighbours alike) or second order (each patch like the
        mean of its neighbours).
    image_context_weight : float, default=0.0
        With a radius ``context``: add the whole-image context's M times this weight, mixing a
        local and a global context (docs/algorithm.md §5.2). The whole image gives each patch
        m - 1 neighbours against the window's (2r + 1)^2 - 1 (728 and 48 on CIFAR at r 3), so
        weights near their ratio (0.07) balance the two. Ignored with ``context="image"``.
    whiten_eps : float, default=1e-3
        Added to the covariance eigenvalues (pixels in [0, 1]).
    dict_epochs : int, default=1
        Passes of Algorithm 1 (at most 1000); 0 keeps the K sampled training patches as the dictionary.
    dict_batch_size : int, default=4096
    dict_lr : float, default=0.1
    dict_max_patches : int or None, default=None
        Run Algorithm 1 on the patches of a random subset of the front-end images holding about
        this many patches (None: all of them).
    max_coherence : float or None, default=None
        Start the dictionary from front-end patches whose pairwise cosines are all at most this
        (walked in a seeded order, each kept when it is far enough from those kept before; the
        [A] implementation uses 0.35 on CIFAR) instead of K uniformly drawn patches. Algorithm 1,
        when ``dict_epochs > 0``, then moves the atoms on. None: uniform draw.
    front_end_images : int, default=10000
        The whitening and the dictionary are fitted on the first this many training images (of X,
        of the stream of ``partial_fit`` chunks, or of the global order of a distributed fit;
        shuffle data sorted by class first); the code statistics use every image. A bound that
        does not depend on how the data are chunked or sharded, so ``partial_fit`` (which keeps at
        most this many images) and a distributed fit give exactly the model of ``fit``.
    pool_size, pool_stride : int, default=4, 2
        Average-pooling window and step over the patch grid (the paper's 4/2). Wider windows that
        cover the grid exactly measured better on CIFAR-10 at K 8192: 7/4 for 6x6 patches (27x27
        grid; 79.51 against 78.93), and beside it 5/3 for a 4x4 SMT (29x29 grid; the pair 80.63).
    pool_sigma : float or None, default=None
        None: every patch of a window weighs the same (the paper's average pooling). A float: the
        patches are weighted by a Gaussian of this width, in patch positions from the window's
        centre (:func:`smt.pooling.pool_window`). Read at transform only: a checkpoint or a fitted
        model serves every value. Measured on CIFAR-10 (K 8192, 50k images + mirrors), it ties
        the box: sigma 3 on the paper's 6x6 model pooled 7/4 gave +0.04 and +0.38 for seeds 0
        and 1 (top-1 only), and on the two-model union -0.03 over two seeds (with the 4x4
        member's 5/3 window box or sigma 2); narrower windows lost at 10k images.
    grayscale_augmentation : {None, "paired", "independent", "context"}, default=None
        RGB only. Fit on every training image and its gray copy (ITU-R 601 luma, replicated to
        3 channels): ``"paired"`` makes the two one context, so the objective learns colour
        invariance; ``"independent"`` adds the gray copies as extra images; ``"context"`` pairs
        them as ``"paired"`` does in the code statistics but keeps them out of the whitening and
        the dictionary (the gray copies only as context for their colour image). ``transform`` is
        unchanged (colour images in, no copies). To make the gray copies ordinary training images
        that also join a kNN reference set, append them to ``X`` instead
        (:func:`smt.augment.add_gray_copies`); on CIFAR-10 that reading measured best of the
        three, though at full scale it too costs accuracy (benchmarks/RESULTS.md).
    gray_weight : float in (0, 1], default=1.0
        With ``"paired"`` or ``"context"``: the node weight u of the gray copy's patches in their
        scene's context, so an edge weighs 1 between colour patches, u between a colour and a gray
        patch and u^2 between gray ones, and a gray patch counts u in G (docs/algorithm.md §5.2).
        Other values than 1 need binary threshold codes, the whole-image context of order 1 and
        numba on CPU.
    normalize_output : bool, default=False
        L2-normalise each output vector (the kNN does this itself).
    batch_size : int, default=256
        Images per streamed batch.
    device : {"auto", "cpu", "cuda", ...}, default="auto"
    random_state : int, RandomState or None, default=None
    verbose : bool, default=False
        Progress bars.
    checkpoint_path : str or None, default=None
        ``fit`` saves its state here every ``checkpoint_every`` batches and at the end of every
        stage, and resumes from it when it exists; a finished fit's checkpoint goes straight to the
        solve, so one statistics pass serves every ``n_components``, ``n_skip``, pooling and
        ``normalize_output`` (the parameters read after it). A checkpoint of other images (a hash of
        every pixel) or other parameters is refused, saying which; delete it to start over. Under
        torch.distributed every process writes its own file, ``<checkpoint_path>.rank<r>-of-<world size>``.
        Not saved with the model: a loaded model writes no checkpoint until given one.
    checkpoint_every : int, default=50
    keep_statistics : bool, default=True
        Keep the code statistics (G and M, two K x K float64 sums: 1 GiB at K 8192) after the
        solve, for ``partial_fit`` to add to and ``save(stream=True)`` to write. False drops them
        once the projection is solved: a model that only transforms (a kNN benchmark, one member
        of several side by side) then holds 2 K^2 fewer float64 values; ``partial_fit`` after
        ``fit`` and ``save(stream=True)`` refuse it, saying why. The fit's result is the same.

    Attributes
    ----------
    whitening_ : ndarray of shape (D, D)
        ZCA whitening matrix, D = C * patch_size**2.
    coloring_ : ndarray of shape (D, D)
        Its inverse, to view whitened vectors and atoms as pixels.
    dictionary_ : ndarray of shape (K, D)
        Unit-norm atoms in whitened space.
    atom_usage_ : ndarray of shape (K,)
        Fraction of non-empty training patches whose code uses each atom.
    components_ : ndarray of shape (d, K)
        P; ``P V P^T = I`` for the code second moment V.
    eigenvalues_ : ndarray of shape (d,)
        Slowness of each embedding dimension (ascending).
    skipped_components_ : ndarray of shape (n_skip, K)
    image_shape_ : tuple (H, W, C)
    n_features_in_ : int
        H * W * C.
    patch_grid_shape_ : tuple (H', W')
    n_features_out_ : int
        d * H_p * W_p.
    fit_stats_ : dict
        Seconds per stage of the last ``fit``/``partial_fit`` call, mean active atoms per non-empty
        patch and the fraction of non-empty patches left without a code (a finished checkpoint
        resumed codes nothing: its mean active atoms come from the statistics, without the
        fraction); with ``max_coherence``,
        also the patches tried to find the K atoms and the seconds that took (counted in the
        dictionary's seconds).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X = load_digits().images / 16.0                      # (1797, 8, 8) in [0, 1]
    >>> smt = SMT(patch_size=3, n_atoms=64, coding="one_sparse", n_components=8,
    ...           context=1, pool_size=3, pool_stride=1, random_state=0)
    >>> smt.fit_transform(X).shape
    (1797, 128)
    """

    _parameter_constraints = {
        "patch_size": [Interval(Integral, 1, None, closed="left")],
        "center_patches": ["boolean", StrOptions(set(CENTERINGS))],
        "n_atoms": [Interval(Integral, 1, None, closed="left")],
        "coding": [StrOptions(set(CODINGS))],
        # A cosine: outside [-1, 1] every atom or none would pass.
        "threshold": [Interval(Real, -1, 1, closed="both")],
        "n_nonzero": [Interval(Integral, 1, None, closed="left")],
        "max_active": [Interval(Integral, 1, None, closed="left"), None],
        "empty_code": [StrOptions(set(EMPTY_CODES))],
        "code_norm": [StrOptions({c for c in CODE_NORMS if c is not None}), None],
        "code_values": [StrOptions(set(CODE_VALUES))],
        "precision": [StrOptions(set(PRECISIONS))],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "n_skip": [Interval(Integral, 0, None, closed="left")],
        "context": [StrOptions({"image"}), Interval(Integral, 1, None, closed="left")],
        "order": [Options(Integral, {1, 2})],
        # Beyond 1e6 the window's part of M is below float64's resolution of the sum (and 1e308 overflows).
        "image_context_weight": [Interval(Real, 0, 1e6, closed="both")],
        # Beyond 1e6 the whitening is the identity over sqrt(eps) to 1e-6 (the codes do not change),
        # and float32 loses the patches once eps passes 1e76.
        "whiten_eps": [Interval(Real, 0, 1e6, closed="right")],
        # One epoch is the paper's; the bound turns a mistyped count into an error, not a run of years.
        "dict_epochs": [Interval(Integral, 0, _MAX_DICT_EPOCHS, closed="both")],
        "dict_batch_size": [Interval(Integral, 1, None, closed="left")],
        # 0 would leave the sampled atoms where they are: that is dict_epochs=0. Beyond 1e6 an
        # atom steps to its mean residual's direction whatever the value (float32 overflows ~1e35).
        "dict_lr": [Interval(Real, 0, 1e6, closed="right")],
        "dict_max_patches": [Interval(Integral, 1, None, closed="left"), None],
        "max_coherence": [Interval(Real, -1, 1, closed="left"), None],
        "front_end_images": [Interval(Integral, 1, None, closed="left")],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "pool_stride": [Interval(Integral, 1, None, closed="left")],
        "pool_sigma": [Interval(Real, 0, None, closed="neither"), None],
        "grayscale_augmentation": [StrOptions({"paired", "independent", "context"}), None],
        "gray_weight": [Interval(Real, 0, 1, closed="right")],
        "normalize_output": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": DEVICE,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "checkpoint_path": PATH,
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "keep_statistics": ["boolean"],
    }

    def __init__(self, patch_size=6, *, center_patches=True, n_atoms=8192, coding="threshold", threshold=0.3, n_nonzero=1,
                 max_active=None, empty_code="zero", code_norm=None, code_values="binary", precision="float32", n_components=384,
                 n_skip=1, context="image", order=1, image_context_weight=0.0, whiten_eps=1e-3, dict_epochs=1, dict_batch_size=4096,
                 dict_lr=0.1, dict_max_patches=None, max_coherence=None, front_end_images=10000, pool_size=4,
                 pool_stride=2, pool_sigma=None, grayscale_augmentation=None, gray_weight=1.0, normalize_output=False,
                 batch_size=256, device="auto", random_state=None, verbose=False, checkpoint_path=None,
                 checkpoint_every=50, keep_statistics=True):
        self.patch_size = patch_size
        self.center_patches = center_patches
        self.n_atoms = n_atoms
        self.coding = coding
        self.threshold = threshold
        self.n_nonzero = n_nonzero
        self.max_active = max_active
        self.empty_code = empty_code
        self.code_norm = code_norm
        self.code_values = code_values
        self.precision = precision
        self.n_components = n_components
        self.n_skip = n_skip
        self.context = context
        self.order = order
        self.image_context_weight = image_context_weight
        self.whiten_eps = whiten_eps
        self.dict_epochs = dict_epochs
        self.dict_batch_size = dict_batch_size
        self.dict_lr = dict_lr
        self.dict_max_patches = dict_max_patches
        self.max_coherence = max_coherence
        self.front_end_images = front_end_images
        self.pool_size = pool_size
        self.pool_stride = pool_stride
        self.pool_sigma = pool_sigma
        self.grayscale_augmentation = grayscale_augmentation
        self.gray_weight = gray_weight
        self.normalize_output = normalize_output
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.keep_statistics = keep_statistics

    # ------------------------------------------------------------------ public API
    def fit(self, X, y=None):
        """Learn whitening, dictionary and projection from images in streaming passes.

        The whitening and the dictionary (the front end) are fitted on the first
        ``front_end_images`` images of X; the code statistics are summed over all of X. Under
        ``torch.distributed`` each process passes its own contiguous shard (see
        :mod:`smt.distributed`) and the result equals a one-process fit on the concatenated shards.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
            uint8 in 0-255 or float in [0, 1].
        y : ignored

        Returns
        -------
        self
        """
        self._reset()
        return self._fit_stream(X, resumable=True, final=True)

    def fit_transform(self, X, y=None):
        """Fit and embed X, encoding every training patch once.

        The same result as ``fit(X).transform(X)`` at about half the encoding work: the fit keeps
        the binary codes it computes for the statistics (compactly, in memory up to 256 MiB and in a
        temporary file beyond) and embeds from them. Codes a resumed fit did not compute in this
        process are computed again.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
        y : ignored

        Returns
        -------
        Z : ndarray or torch.Tensor of shape (n, n_features_out_), float32
        """
        chunks = list(self._fit_embed(X, max(len(X), 1)))  # one chunk, filled in place
        z = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return z.to(X.device) if isinstance(X, torch.Tensor) else z.numpy()

    def fit_transform_chunks(self, X, chunk_size=5000):
        """Fit on X, then yield its embeddings chunk by chunk, encoding every patch once.

        For training sets whose embeddings do not fit in memory at once (50,000 CIFAR images at
        d 384 are 11 GB): the chunks equal ``transform(X[i:i + chunk_size])``.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
        chunk_size : int, default=5000
            Images per yielded chunk (the last may be smaller).

        Yields
        ------
        Z : ndarray of shape (chunk_size, n_features_out_), float32
        """
        check_param("chunk_size", chunk_size, [Interval(Integral, 1, None, closed="left")], "SMT.fit_transform_chunks")
        for z in self._fit_embed(X, chunk_size):
            yield z.numpy()

    def _fit_embed(self, X, chunk_size):
        """``fit`` with the codes kept, then the embeddings of X in chunks of ``chunk_size`` (CPU tensors)."""
        self._reset()
        # The store keeps atoms only: real-valued codes are computed again for the embedding.
        store = CodeStore(self.n_atoms) if self.code_values == "binary" else None
        try:
            self._fit_stream(X, resumable=True, final=True, store=store)
            device = resolve_device(self.device)
            images = self._check_images(X, reset=False)
            done = 0
            if store is not None and store.n_images_ == len(images):
                parts = (self._embed_codes(atoms, counts, device).cpu()
                         for atoms, counts in self._progress(store, "embed (kept codes)", len(images)))
            else:
                parts = self._embed_images(images, device)
            # Each chunk is filled in place: no concatenated copy beside the parts.
            out, held = None, 0
            for z in parts:
                while len(z):
                    if out is None:
                        out, held = z.new_empty((min(chunk_size, len(images) - done), z.shape[1])), 0
                    take = min(len(z), len(out) - held)
                    out[held:held + take] = z[:take]
                    held, z = held + take, z[take:]
                    if held == len(out):
                        done += held
                        yield out
                        out = None
        finally:
            if store is not None:
                store.close()

    def _drop_statistics(self):
        """Free G and M after the solve; ``partial_fit`` and ``save(stream=True)`` then refuse (``_dropped``)."""
        self._stats = self._stream = None

    def _reset(self):
        """Forget everything a fit learned."""
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]:
            delattr(self, attr)
        for private in ("_stats", "_stream"):
            self.__dict__.pop(private, None)

    def partial_fit(self, X, y=None):
        """Fit on one more chunk of a stream of images; the chunks together give the model ``fit``
        gives on their concatenation.

        Until ``front_end_images`` images have arrived, the chunks are kept (at most that many
        images), and every call refits the front end on them and recounts their statistics;
        after that the front end is frozen, the kept images are dropped, and each chunk only adds
        its statistics (sums over images). Every call re-solves the projection. After ``fit``
        the front end is frozen and ``partial_fit`` only adds statistics. Checkpoints are
        written by ``fit`` only; to keep a stream of ``partial_fit`` calls safe, save the model
        after a chunk with ``save(path, stream=True)`` and go on from ``SMT.load(path)``.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
        y : ignored

        Returns
        -------
        self
        """
        return self._fit_stream(X, resumable=False, final=False)

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (n, H, W, C)
            Same H, W and C as at fit.

        Returns
        -------
        Z : ndarray or torch.Tensor of shape (n, n_features_out_), float32
            A tensor (on X's device) when X is a tensor.
        """
        check_is_fitted(self, "components_")
        self._check_params()
        images = self._check_images(X, reset=False)
        device = resolve_device(self.device)
        warn_emulated_bf16(self.precision, device, "SMT")
        z = None
        for i, part in zip(range(0, len(images), self.batch_size), self._embed_images(images, device)):
            if z is None:  # filled in place: no concatenated copy beside the parts
                z = part.new_empty((len(images), part.shape[1]))
            z[i:i + len(part)] = part
        if isinstance(X, torch.Tensor):
            return z.to(X.device)
        return z.numpy()

    def save(self, path, stream=False):
        """Save parameters and fitted state to one ``.npz`` file (arrays and JSON, no pickle).

        Parameters
        ----------
        path : str or Path
        stream : bool, default=False
            Also write what ``partial_fit`` needs to go on after :meth:`load`: the code statistics
            (three K x K float64 sums) and, while the front end is still open, the images kept
            for it. A stream of ``partial_fit`` calls saved after each chunk loses nothing when
            the process dies. Under torch.distributed each process holds the sums of its own
            shard: give each process its own path.
        """
        meta, arrays = self._model_file()
        if stream:
            state = self.__dict__.get("_stream")
            if state is None:
                raise ValueError("save(stream=True) needs the statistics of a fit or partial_fit made in this "
                                 "process (or loaded from a file saved with stream=True)" + _dropped(self))
            arrays.update(prefixed("stats", self._stats.get_state()))
            meta["stream"] = {k: state[k] for k in ("seed", "n_seen", "frozen")}
            if state["front"] is not None:
                arrays["stream.front"] = state["front"].numpy()
        save_npz(path, meta, arrays)

    @classmethod
    def load(cls, path, device=None):
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
        device : str, torch.device or None
            Where the model runs ("auto" when None); the file names no device, and its model has
            no ``checkpoint_path``.

        Raises
        ------
        ModelFileError
            (a ``ValueError``) naming the file and the problem: not an SMT model file (another
            kind, damaged, truncated, empty), invalid parameters, arrays of the wrong shape.
        """
        meta, arrays, params = read_model(path, "SMT", _FORMAT_VERSION, cls().get_params())
        model = cls._from_model_file(meta, arrays, params, path, device)
        if "stream" in meta:
            try:
                state = unprefixed("stats", arrays)
                k = model.n_atoms
                for key, size in (("gram", k * k), ("context", k * k), ("usage", k)):
                    if np.size(state[key]) != size:
                        raise ValueError(f"stats.{key} holds {np.size(state[key])} values, n_atoms={k} gives {size}")
                stats = model._new_statistics(resolve_device(model.device))
                model._stats = stats.set_state(state)
                front = arrays.get("stream.front")
                stream = meta_field(meta, "stream", dict, path)
                model._stream = {"seed": int(stream["seed"]), "n_seen": int(stream["n_seen"]),
                                 "frozen": bool(stream["frozen"]),
                                 "front": None if front is None else torch.from_numpy(front)}
            except ModelFileError:
                raise
            except Exception as e:  # noqa: BLE001 - any inconsistency of the saved statistics
                raise ModelFileError(f"{path}: the stream state (save(stream=True)) is malformed: "
                                     f"{type(e).__name__}: {e}") from e
        return model

    def _model_file(self):
        """The header and arrays of this fitted model's file (without the stream state)."""
        check_is_fitted(self, "components_")
        self._check_params()
        self._check_shape_params()
        arrays = {name: np.asarray(getattr(self, name)) for name in self._fitted_arrays()}
        # Where to write and what to run on are the loading caller's to say, not the file's.
        params = {k: v for k, v in self.get_params().items() if k not in _CALLER_PARAMS}
        meta = {"kind": "SMT", "format_version": _FORMAT_VERSION, "params": params,
                "image_shape": list(self.image_shape_)}
        return meta, arrays

    @classmethod
    def _from_model_file(cls, meta, arrays, params, path, device):
        """The model of a file's header, arrays and parameters (checked; errors name ``path``)."""
        model = cls()
        try:
            params = {k: v for k, v in params.items() if k not in _CALLER_PARAMS}
            model.set_params(**params, device="auto" if device is None else device)
            model._check_params()
            shape = meta_field(meta, "image_shape", list, path)
            if len(shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in shape):
                raise ValueError(f"image_shape must be 3 positive ints, got {shape}")
            model._set_shape(tuple(shape))
            for name in model._fitted_arrays():
                if name not in arrays:
                    raise ValueError(f"the array {name} is missing")
                setattr(model, name, arrays[name])
            model._check_fitted_arrays()
        except ModelFileError:
            raise
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: not a usable SMT model: {e}") from e
        return model

    # ------------------------------------------------------------------ fitting
    def _fit_stream(self, X, resumable, final, store=None):
        """The one fitting path of ``fit``, ``partial_fit`` and the distributed fit.

        The model is defined on the global stream of images (this call's images follow those of
        earlier ``partial_fit`` calls; under torch.distributed, the shards follow in rank order):
        whitening and dictionary are fitted on its first ``front_end_images`` images, with every
        random choice keyed by the seed and the global image index, and the code statistics are
        summed over all of it. So neither chunking, sharding nor ``batch_size`` changes the model.
        ``store`` (a :class:`~smt.code_store.CodeStore`) receives the codes of this call's images
        when the statistics pass computes all of them, and stays empty otherwise.
        """
        self._check_params()
        device = resolve_device(self.device)
        warn_emulated_bf16(self.precision, device, "SMT")
        _check_statistics_fit_in_memory(self.n_atoms, device)
        stream = self.__dict__.get("_stream")
        if stream is None and hasattr(self, "components_"):
            raise ValueError("partial_fit continues a fit made in this process or a model saved with "
                             "save(path, stream=True)" + (_dropped(self) or "; this model was loaded from a file "
                             "without statistics to add to") + ": refit it with fit or partial_fit")
        # The one place the fit meets the other processes (one process: a shard of everything).
        shard, images = distributed.Shard.open(lambda: self._check_images(X, reset=stream is None))
        self.fit_stats_ = {}
        if stream is None:
            seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            stream = {"seed": shard.seed(seed), "n_seen": 0, "front": None, "frozen": False}
        stream = dict(stream)  # stored when the call succeeds
        self._ckpt = Checkpoint(shard.checkpoint_path(self.checkpoint_path) if resumable else None,
                                self.checkpoint_every, self._model_params(), images,
                                defaults=type(self)()._model_params(), canonical=_canonical_params)
        n_seen, total = stream["n_seen"], shard.total
        n_new = 0 if stream["frozen"] else min(self.front_end_images, n_seen + total) - n_seen
        run = FitPosition(seed=stream["seed"])
        sources = [images]
        if n_new > 0:
            run.phase = "whitening"
            stages = self._new_stages(device)
            run = self._resume(run, stages, device)
            stream["seed"] = run.seed
            front = shard.first(images, n_new, wire=_as_buffer)
            if stream["front"] is not None:
                front = _concat_images(stream["front"], _as_buffer(front))
            # Rank 0's arrays everywhere: every process codes with bit-identical ones.
            for name, value in shard.from_root(self._fit_front_end(front, run, stages, device)).items():
                setattr(self, name, value)
            if stream["front"] is not None and shard.is_root:
                # The statistics restart with the new front end: recount the kept earlier images.
                sources = [stream["front"], images]
            full = n_seen + n_new >= self.front_end_images
            stream["frozen"] = full or final
            stream["front"] = None if stream["frozen"] else _as_buffer(front, copy=True)
        else:
            stages = {"stats": self._stats}
            self.fit_stats_.update(whitening_seconds=0.0, dictionary_seconds=0.0)
        tic = time.perf_counter()
        tally = np.zeros(3, dtype=np.int64)
        # A finished checkpoint holds the whole statistics: straight to the solve. A resumed pass
        # computes only the codes after the checkpoint: keep none.
        finished = run.phase == "done"
        if not finished:
            keep = store if len(sources) == 1 and run.batch == 0 else None
            for i, source in enumerate(sources):
                if i:
                    run.batch = 0
                tally += self._accumulate(source, run, stages, device, keep if source is images else None)
        n_active, n_coded, n_nodes = (int(v) for v in tally)
        if n_nodes:  # diagnostics of this process's images of this call (docs/algorithm.md §4)
            self.fit_stats_["mean_active_atoms"] = n_active / n_nodes
            self.fit_stats_["uncoded_fraction"] = 1 - n_coded / n_nodes
        elif finished and stages["stats"].n_patches_:
            # Nothing was coded again, but the statistics count every node's active atoms.
            self.fit_stats_["mean_active_atoms"] = float(stages["stats"].usage_.sum()) / stages["stats"].n_patches_
        self.fit_stats_["statistics_seconds"] = time.perf_counter() - tic
        self._stats = stages["stats"]
        tic = time.perf_counter()
        self._solve(shard.summed(self._stats), device)
        self.fit_stats_["solve_seconds"] = time.perf_counter() - tic
        stream["n_seen"] = n_seen + total
        self._stream = stream
        if not self.keep_statistics:
            self._drop_statistics()
        if not finished:
            run.phase = "done"
            self._ckpt.save(run, stages)
        return self

    def _new_stages(self, device):
        return {"whitening": Whitening(self.whiten_eps),
                "dictionary": OnlineDictionary(self.n_atoms, self.dict_batch_size, self.dict_lr),
                "stats": self._new_statistics(device),
                "sample": {}}

    def _resume(self, run, stages, device):
        """The position to go on from: ``run``, or the checkpoint's with its stages' states restored."""
        k, dim = self.n_atoms, self.image_shape_[2] * self.patch_size ** 2
        saved = self._ckpt.read({"whitening.scatter": dim * dim, "dictionary.dictionary": k * dim,
                                 "dictionary.activation": k, "stats.gram": k * k, "stats.context": k * k,
                                 "stats.usage": k})
        if saved is None:
            return run
        position, arrays, n_nonempty = saved
        self._ckpt.restore(stages, arrays, device)
        stages["sample"]["n_nonempty"] = n_nonempty
        if "sample.keys" in arrays:
            stages["sample"]["keys"] = torch.as_tensor(arrays["sample.keys"], device=device)
            stages["sample"]["patches"] = torch.as_tensor(arrays["sample.patches"], device=device)
        return position

    def _fit_front_end(self, front, run, stages, device):
        """Whitening and dictionary on the front-end images ``front`` (global indices 0..n-1);
        returns the fitted arrays."""
        white, sample = stages["whitening"], stages["sample"]
        n = len(front)
        seed = run.seed
        n_views = self._front_views
        tic = time.perf_counter()
        if run.phase == "whitening":
            # One pass: whitening moments and, unless the coherence filter picks the atoms after
            # it, a uniform sample without replacement of K non-empty patches (the K smallest of
            # uniform keys, each a hash of the seed and the patch's global image index, view and
            # position) to start the dictionary from.
            for b in self._batches(n, run, "whitening"):
                batch = front[b:b + self.batch_size]
                patches, empty = self._patches(self._views(batch, device, front=True))
                white.partial_fit(patches)
                cand = patches[~empty]
                sample["n_nonempty"] = sample.get("n_nonempty", 0) + len(cand)
                if self.max_coherence is None:
                    keys = torch.as_tensor(patch_keys(seed, b, len(batch), n_views, empty.shape[1:]),
                                           device=device)[~empty]
                    if "keys" in sample:
                        keys, cand = torch.cat([sample["keys"], keys]), torch.cat([sample["patches"], cand])
                    keep = keys.argsort(stable=True)[:self.n_atoms]
                    sample["keys"], sample["patches"] = keys[keep], cand[keep]
                run.batch = b + self.batch_size
                self._ckpt.maybe_save(run, stages, self.batch_size)
            if sample.get("n_nonempty", 0) < self.n_atoms:
                raise ValueError(
                    f"fit needs at least n_atoms={self.n_atoms} non-constant patches to start the dictionary, "
                    f"but the {n} front-end images (the first front_end_images={self.front_end_images}) hold "
                    f"{sample.get('n_nonempty', 0)}; lower n_atoms or pass more images")
            white.finalize()
            if self.max_coherence is None:
                atoms = white.transform(sample["patches"].to(torch.float32))
                stages["dictionary"].initialize(atoms, [seed, 3])
            else:
                start = time.perf_counter()
                atoms, n_tried = incoherent_atoms(self._front_patches(front, white, seed, device), self.n_atoms,
                                                  self.max_coherence)
                stages["dictionary"].initialize(atoms, [seed, 3], jitter=False)
                self.fit_stats_.update(dictionary_candidates=n_tried,
                                       coherence_filter_seconds=time.perf_counter() - start)
            run.phase, run.epoch, run.batch = "dictionary", 0, 0
            self._ckpt.save(run, stages)
        elif white.__dict__.get("whitening_") is None:
            white.finalize()
        self.fit_stats_["whitening_seconds"] = (time.perf_counter() - tic
                                                - self.fit_stats_.get("coherence_filter_seconds", 0.0))
        tic = time.perf_counter()
        dictionary = stages["dictionary"]
        if run.phase == "dictionary":
            per_image = sample["n_nonempty"] / n
            n_dict = n if self.dict_max_patches is None else min(n, math.ceil(self.dict_max_patches / per_image))
            # Images are walked in a seeded permutation, in groups of a fixed patch count (not
            # batch_size); the non-empty patches of a group are shuffled with a key of its index.
            group = self._front_group()
            while run.epoch < self.dict_epochs:
                order = np.random.default_rng([seed, 1, run.epoch]).permutation(n)[:n_dict]
                for g in self._batches(n_dict, run, f"dictionary epoch {run.epoch + 1}", group):
                    dictionary.partial_fit(self._group_patches(front, order[g:g + group], white,
                                                               [seed, 2, run.epoch, g // group], device))
                    run.batch = g + group
                    self._ckpt.maybe_save(run, stages, group)
                run.epoch, run.batch = run.epoch + 1, 0
            dictionary.flush()
            run.phase, run.epoch, run.batch = "statistics", 0, 0
            self._ckpt.save(run, stages)
        self.fit_stats_["dictionary_seconds"] = (time.perf_counter() - tic
                                                 + self.fit_stats_.get("coherence_filter_seconds", 0.0))
        return {"whitening_": white.whitening_, "coloring_": white.coloring_,
                "dictionary_": dictionary.dictionary_.cpu().numpy()}

    def _front_patches(self, front, white, seed, device):
        """All front-end patches, whitened, in a seeded order: the images in a permutation, in
        groups, each group's patches shuffled."""
        group = self._front_group()
        order = np.random.default_rng([seed, 4]).permutation(len(front))
        # The walk stops where the K-th atom is found, so the bar ends short of the total.
        for g in self._progress(range(0, len(front), group), "dictionary (coherence filter)", len(front)):
            yield self._group_patches(front, order[g:g + group], white, [seed, 5, g // group], device)

    def _front_group(self):
        """Images per group of the passes over the front end: a fixed patch count, not batch_size,
        so that the walk (and so the model) does not depend on batch_size."""
        n_views = self._front_views
        gh, gw = self.patch_grid_shape_
        return max(1, math.ceil(_DICT_GROUP_BATCHES * self.dict_batch_size / (n_views * gh * gw)))

    def _group_patches(self, front, idx, white, shuffle_seed, device):
        """The whitened non-empty patches of the front-end images ``idx``, in a seeded shuffle."""
        patches, empty = self._patches(self._views(front[np.sort(idx)], device, front=True))
        x = white.transform(patches[~empty])
        shuffle = np.random.default_rng(shuffle_seed).permutation(len(x))
        return x[torch.as_tensor(shuffle, device=device)]

    def _accumulate(self, images, run, stages, device, store=None):
        """Add the code statistics of ``images``; returns (active atoms, coded patches, nodes).
        ``store`` receives the codes of the images (not of their gray views)."""
        stats = stages["stats"]
        phi = torch.as_tensor(self.dictionary_, dtype=torch.float32, device=device)
        n_active = n_coded = n_nodes = 0
        views = 1 if self.grayscale_augmentation is None else 2
        n_views = self._context_views
        for b in self._batches(len(images), run, "statistics"):
            batch = images[b:b + self.batch_size]
            for part in self._code_steps(len(batch), views, bytes_per_entry=24):
                patches, empty = self._patches(self._views(batch[part], device))
                lists = self._code_lists(patches, empty, phi, device)
                if lists is not None:
                    atoms, counts = lists
                    stats.partial_fit_lists(atoms, counts, ~empty, n_views=n_views)
                    counts = counts.reshape(empty.shape)
                    if store is not None:
                        own = counts[:len(batch[part])]
                        store.append_lists(atoms[:int(own.sum())], own)
                    active = torch.from_numpy(counts)[~empty]
                else:
                    idx, val = self._code(patches, empty, phi, device)
                    stats.partial_fit(idx, val, ~empty, n_views=n_views)
                    if store is not None:
                        store.append(idx[:len(batch[part])])
                    active = (idx >= 0).sum(-1)[~empty]
                mean = float(active.float().mean()) if n_nodes == 0 and len(active) else 0.0
                if mean > max(_DENSE_CODES * self.n_atoms, _DENSE_MIN_ATOMS):
                    warnings.warn(
                        f"the codes are dense: {mean:.0f} of the {self.n_atoms} atoms are "
                        f"active in a patch on average (threshold {self.threshold}), and the statistics cost grows "
                        f"with the square of that; raise threshold, set max_active, or use coding='top_k'",
                        UserWarning, stacklevel=4)
                n_active += int(active.sum())
                n_coded += int((active > 0).sum())
                n_nodes += len(active)
            run.batch = b + self.batch_size
            self._ckpt.maybe_save(run, stages, self.batch_size)
        return np.array([n_active, n_coded, n_nodes], dtype=np.int64)

    def _solve(self, stats, device):
        if stats.n_patches_ == 0:
            raise ValueError("the images hold no non-constant patch: nothing to learn an embedding from")
        self.components_, self.eigenvalues_, self.skipped_components_ = solve_embedding(
            stats.gram_, stats.context_, stats.n_patches_, self.n_components, self.n_skip, device)
        self.atom_usage_ = (stats.usage_ / stats.n_patches_).cpu().numpy()
        self.__dict__.pop("_cache", None)

    @property
    def _front_views(self):
        """Views per image in the whitening and the dictionary: the gray copy too, unless it is context only."""
        return 2 if self.grayscale_augmentation in ("paired", "independent") else 1

    @property
    def _context_views(self):
        """Views per scene in the code statistics' context: 2 when the gray copy shares its colour
        image's context ("paired", "context"), else 1 (an independent gray copy is its own scene)."""
        return 2 if self.grayscale_augmentation in ("paired", "context") else 1

    def _views(self, images, device, front=False):
        """A slice of training images as the batch the fit (``front``: its front end) sees: with
        their gray copies, if asked."""
        batch = to_batch(images, device)
        gray = self.grayscale_augmentation is not None and not (front and self._front_views == 1)
        return gray_views(batch) if gray else batch

    def _new_statistics(self, device):
        return ContextStatistics(self.n_atoms, self._context_radius(), self.order, device, self.image_context_weight,
                                 view_weight=self.gray_weight if self._context_views == 2 else 1.0)

    # ------------------------------------------------------------------ embedding
    def _embed_images(self, images, device):
        """Embeddings of checked images, batch by batch (CPU tensors)."""
        for i in self._progress(range(0, len(images), self.batch_size), "embed", len(images)):
            yield self._embed(to_batch(images[i:i + self.batch_size], device), device).cpu()

    def _embed(self, batch, device):
        """Embeddings of a batch of images, (n, n_features_out_)."""
        out = []
        phi = self._embedding_cache(device)["phi"]
        for part in self._code_steps(len(batch), 1, bytes_per_entry=16):
            patches, empty = self._patches(batch[part])
            # The flat lists where the compiled coder gives them: the padded codes are about 3.5x
            # their size at K 8192, and each step's fresh padded arrays were faulted in page by page.
            lists = self._code_lists(patches, empty, phi, device)
            if lists is not None:
                atoms, counts = lists
                out.append(self._embed_codes(torch.from_numpy(atoms), torch.from_numpy(counts).view(empty.shape),
                                             device))
                continue
            binary = self.code_values == "binary"
            idx, val = self._code(patches, empty, phi, device, values=not binary)
            valid = idx >= 0
            out.append(self._embed_codes(idx[valid].to(torch.int32), valid.sum(-1, dtype=torch.int32), device,
                                         weights=None if binary else val[valid]))
        return torch.cat(out)

    def _embed_codes(self, atoms, counts, device, weights=None):
        """Embeddings of images from their codes.

        Parameters
        ----------
        atoms : torch.Tensor of shape (nnz,), int32
            Every patch's active atoms in turn (image, row, column order).
        counts : torch.Tensor of shape (n, H', W'), int32
            Active atoms per patch.
        weights : torch.Tensor of shape (nnz,), float32, optional
            The atoms' coefficients (real-valued codes); None for binary codes.
        """
        cache = self._embedding_cache(device)
        n, gh, gw = counts.shape
        counts = counts.reshape(-1).to(device)
        index_dtype = torch.int32 if len(atoms) < 2 ** 31 else torch.int64
        offsets = torch.cumsum(counts, 0, dtype=index_dtype) - counts
        # Every code's active coefficients are equal (binary, or binary over a per-code count), and
        # beta is L2-normalised next, so an unweighted sum gives the same beta.
        beta = torch.nn.functional.embedding_bag(
            atoms.to(device, index_dtype), cache["table"], offsets, mode="sum",
            per_sample_weights=None if weights is None else weights.to(device, torch.float32))
        beta = l2_normalize(beta, dim=1)
        beta = beta.view(n, gh, gw, -1).permute(0, 3, 1, 2)
        z = pool_embeddings(beta, self.pool_size, self.pool_stride, self.pool_sigma)
        if self.normalize_output:
            z = l2_normalize(z)
        return z

    def _embedding_cache(self, device):
        cache = self.__dict__.get("_cache")
        if cache is None or cache["device"] != device:
            cache = {"device": device,
                     "table": torch.as_tensor(self.components_.T, dtype=torch.float32, device=device).contiguous(),
                     "phi": torch.as_tensor(self.dictionary_, dtype=torch.float32, device=device)}
            self._cache = cache
        return cache

    # ------------------------------------------------------------------ encoding
    def _code_steps(self, n_images, views, bytes_per_entry):
        """Slices of a batch of ``n_images`` coded at once: their padded codes, at the width of the
        last codes (``_code_width``, updated as the slices are coded), hold about ``_CODE_BYTES``.
        Before any code is known the first slice is small: a guessed width can be 10x too narrow
        (dense codes), and the first step then held several GiB."""
        gh, gw = self.patch_grid_shape_
        start = 0
        while start < n_images:
            width = self.__dict__.get("_code_width")
            step = _FIRST_CODE_STEP if width is None else max(
                1, _CODE_BYTES // (views * gh * gw * width * bytes_per_entry))
            yield slice(start, start + step)
            start += step

    def _patches(self, images):
        return extract_patches(images, self.patch_size, center=self.center_patches)

    def _code_lists(self, patches, empty, phi, device):
        """Binary threshold codes of a patch grid as flat lists: (atoms (nnz,) int32 ascending per
        patch, counts (n * H' * W',) int64 with 0 at constant patches), or None where only the
        padded codes of ``_code`` apply (other codings or code values, CUDA, no numba)."""
        if not (self.coding == "threshold" and self.max_active is None and self.code_values == "binary"
                and self.code_norm is None and device.type == "cpu"):
            return None
        z, keep = self._whitened(patches, empty, device)
        lists = threshold_lists(z, phi, self.threshold, self.empty_code, self.precision)
        if lists is None:
            return None
        atoms, kept_counts = lists
        counts = np.zeros(keep.numel(), np.int64)
        counts[keep.numpy()] = kept_counts
        self._code_width = max(int(kept_counts.max()) if len(kept_counts) else 0, 1)
        return atoms, counts

    def _code(self, patches, empty, phi, device, values=True):
        """Codes on the patch grid; ``values=False`` skips the padded coefficient array (None)."""
        n, gh, gw, dim = patches.shape
        z, keep = self._whitened(patches, empty, device)
        idx, val = sparse_code(z, phi, self.coding, self.threshold, self.n_nonzero, self.max_active,
                               self.empty_code, self.code_norm, precision=self.precision,
                               code_values=self.code_values)
        self._code_width = idx.shape[1]
        if len(idx) == n * gh * gw:  # no constant patch: the codes are already on the grid
            return idx.view(n, gh, gw, -1), (val.view(n, gh, gw, -1) if values else None)
        full_idx = idx.new_full((n * gh * gw, idx.shape[1]), -1)
        full_idx[keep] = idx
        if not values:
            return full_idx.view(n, gh, gw, -1), None
        full_val = val.new_zeros((n * gh * gw, val.shape[1]))
        full_val[keep] = val
        return full_idx.view(n, gh, gw, -1), full_val.view(n, gh, gw, -1)

    def _whitened(self, patches, empty, device):
        """The whitened, unit-norm non-constant patches of a grid, (n_kept, D), and the kept mask."""
        x = torch.as_tensor(self.whitening_, dtype=torch.float32, device=device)
        keep = ~empty.reshape(-1)
        # constant patches get no code: skip their GEMM
        return l2_normalize(patches.reshape(-1, patches.shape[-1])[keep] @ x), keep

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        """Validate every parameter (the error names the first bad one), then their relations."""
        check_params(self.get_params(), self._parameter_constraints, type(self).__name__)
        if self.n_nonzero > self.n_atoms:
            raise ValueError(f"SMT: n_nonzero={self.n_nonzero} exceeds n_atoms={self.n_atoms}")
        if self.code_values == "excess" and self.coding != "threshold":
            raise ValueError(f"SMT: code_values='excess' needs coding='threshold', got coding={self.coding!r}")
        if self.n_components + self.n_skip > self.n_atoms:
            raise ValueError(f"SMT: n_components + n_skip = {self.n_components + self.n_skip} exceeds "
                             f"n_atoms={self.n_atoms}, the most directions the codes can span")
        if (self.gray_weight != 1 and self._context_views == 2
                and not (self.context == "image" and self.order == 1 and self.code_values == "binary"
                         and self.code_norm is None)):
            raise ValueError(f"SMT: gray_weight={self.gray_weight} needs binary codes (code_values='binary', "
                             f"code_norm=None) in the whole-image context of order 1; got context={self.context!r}, "
                             f"order={self.order}, code_values={self.code_values!r}, code_norm={self.code_norm!r}")

    def _check_images(self, X, reset):
        images = as_images(X)
        _, h, w, c = images.shape
        if reset:
            if self.grayscale_augmentation is not None and c != 3:
                raise ValueError(f"grayscale_augmentation needs RGB images (3 channels), got {c} channel(s)")
            p = self.patch_size
            if h < p or w < p:
                raise ValueError(f"images of {h}x{w} are smaller than a {p}x{p} patch; lower patch_size")
            gh, gw = patch_grid_shape(h, w, p)
            if gh < self.pool_size or gw < self.pool_size:
                raise ValueError(
                    f"the {gh}x{gw} patch grid of {h}x{w} images is smaller than the pooling kernel "
                    f"{self.pool_size}; lower patch_size or pool_size")
            self._set_shape((h, w, c))
            return images
        self._check_shape_params()
        if (h, w, c) != tuple(self.image_shape_):
            fh, fw, fc = self.image_shape_
            raise ValueError(f"X has images of {h}x{w} with {c} channel(s), but SMT was fitted on "
                             f"{fh}x{fw} with {fc} channel(s)")
        return images

    def _set_shape(self, shape):
        h, w, c = shape
        self.image_shape_ = (h, w, c)
        self.n_features_in_ = h * w * c
        self.patch_grid_shape_ = patch_grid_shape(h, w, self.patch_size)
        hp, wp = pooled_grid_shape(*self.patch_grid_shape_, self.pool_size, self.pool_stride)
        self.n_features_out_ = self.n_components * hp * wp
        self._fitted_shape = {name: getattr(self, name) for name in _SHAPE_PARAMS}

    def _check_shape_params(self):
        """Refuse to use a model whose shape parameters were changed (``set_params``) after fit."""
        changed = [f"{name}={getattr(self, name)!r} (fitted with {value!r})"
                   for name, value in self.__dict__.get("_fitted_shape", {}).items() if getattr(self, name) != value]
        if changed:
            raise ValueError(f"SMT: {', '.join(changed)} changed after fit; the fitted model has another shape: "
                             f"call fit again, or set the parameter back")

    def _check_fitted_arrays(self):
        """The fitted arrays (of a loaded file) have the shapes the parameters give, and finite values."""
        dim = self.image_shape_[2] * self.patch_size ** 2
        k, d = self.n_atoms, self.n_components
        expected = {"whitening_": (dim, dim), "coloring_": (dim, dim), "dictionary_": (k, dim),
                    "atom_usage_": (k,), "components_": (d, k), "eigenvalues_": (d,),
                    "skipped_components_": (self.n_skip, k)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, the parameters give {shape}")
            if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
                raise ValueError(f"{name} must hold finite floats (dtype {value.dtype})")

    def _context_radius(self):
        """``context``, with a radius clamped to the patch grid: a larger one adds no neighbour,
        only (2r + 1)^2 padded ones to every patch's neighbour list."""
        if self.context == "image":
            return "image"
        return int(min(self.context, max(1, max(self.patch_grid_shape_) - 1)))

    def _fitted_arrays(self):
        return ("whitening_", "coloring_", "dictionary_", "atom_usage_", "components_", "eigenvalues_",
                "skipped_components_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ progress & parameters
    def _batches(self, n, run, stage, step=None):
        return self._progress(range(run.batch, n, step or self.batch_size), stage, n)

    def _progress(self, iterable, stage, n_images):
        return tqdm(iterable, desc=f"SMT {stage}", unit="batch", disable=not self.verbose,
                    postfix={"images": n_images}, leave=False)

    def _model_params(self):
        """The parameters that shape what a checkpoint holds (whitening, dictionary, statistics)."""
        return {k: v for k, v in self.get_params().items() if k not in _RUNTIME_PARAMS + _TRANSFORM_PARAMS}


def _canonical_params(params):
    """``params`` with each meaning spelled one way: ``center_patches=True`` is ``"channel"``."""
    if "center_patches" in params:
        params = {**params, "center_patches": centring(params["center_patches"])}
    return params


def _dropped(model):
    """Why a fitted model has no statistics, when it dropped them itself (else '')."""
    if "_stream" in model.__dict__ and model._stream is None:
        return "; this model dropped its statistics after the solve (keep_statistics=False)"
    return ""


def _check_statistics_fit_in_memory(n_atoms, device):
    """The fit holds G and M, two (K, K) float64 sums, and the solve several more (K, K) arrays
    beside them: refuse a K whose statistics and solve exceed this machine's memory, before any
    work (not after an hours-long statistics pass)."""
    need = 2 * 8 * n_atoms ** 2 + solve_bytes(n_atoms, device)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
        return
    if need > have:
        raise ValueError(f"SMT: n_atoms={n_atoms} needs {need / 2**30:.1f} GiB for the code statistics and "
                         f"their solve ({need // (8 * n_atoms ** 2)} {n_atoms} x {n_atoms} float64 arrays), more "
                         f"than this machine's {have / 2**30:.1f} GiB; lower n_atoms")


def _as_buffer(images, copy=False):
    """Images as a CPU tensor that keeps what ``to_batch`` will see: uint8 as is, anything else as
    float32 (``to_batch`` makes the same conversion, so the pixels the fit sees do not change)."""
    if not isinstance(images, torch.Tensor):
        return _as_buffer(torch.from_numpy(np.array(images)))  # a copy (also of a read-only memmap)
    out = images.detach().cpu()
    out = out if out.dtype == torch.uint8 else out.to(torch.float32)
    return out.clone() if copy and out.data_ptr() == images.data_ptr() else out


def _concat_images(a, b):
    """Concatenate two buffers; when their dtypes differ both become float32 in [0, 1]."""
    if a.dtype != b.dtype:
        a, b = (t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t for t in (a, b))
    return torch.cat([a, b])
