"""Plots of fitted SMT models: dictionary atoms, slowness spectrum, nearest neighbours, word maps.

matplotlib is an optional dependency (``pip install "sparse-manifold-transform[viz]"``); it is
imported only when a plot function is called. Every function returns the matplotlib ``Figure``.
"""
import math

import numpy as np

from smt._norm import NORM_EPS

__all__ = ["atom_images", "plot_atoms", "plot_neighbors", "plot_spectrum", "plot_word_map"]

_INSTALL_HINT = 'plotting needs matplotlib: pip install "sparse-manifold-transform[viz]"'


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from e
    return plt


def _numpy(x):
    """A numpy copy-free view of an array, list or (possibly CUDA) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_fitted(model, attrs):
    missing = [a for a in attrs if not hasattr(model, a)]
    if missing:
        raise ValueError(f"the model is not fitted (no {', '.join(missing)}); call fit first")


def atom_images(model):
    """Dictionary atoms of a fitted :class:`smt.SMT` as pixel-space image patches.

    Each atom (a unit vector in whitened space) is mapped back to pixels by the ZCA coloring
    matrix and rescaled to [0, 1] by its own min and max.

    Parameters
    ----------
    model : smt.SMT
        Fitted; uses ``dictionary_`` (K, D), ``coloring_`` (D, D) and ``image_shape_``.

    Returns
    -------
    patches : ndarray of shape (K, p, p) for grayscale or (K, p, p, C), float in [0, 1]
        ``p = model.patch_size``, ``D = C * p * p``.
    """
    _check_fitted(model, ("dictionary_", "coloring_", "image_shape_"))
    atoms = _numpy(model.dictionary_).astype(np.float64) @ _numpy(model.coloring_).astype(np.float64)
    p = int(model.patch_size)
    c = int(model.image_shape_[2])
    # Patches are channel-major (c, i, j) (see smt.patches.extract_patches): to (K, p, p, C).
    patches = atoms.reshape(len(atoms), c, p, p).transpose(0, 2, 3, 1)
    lo = patches.min(axis=(1, 2, 3), keepdims=True)
    hi = patches.max(axis=(1, 2, 3), keepdims=True)
    patches = (patches - lo) / np.where(hi > lo, hi - lo, 1.0)
    return patches[..., 0] if c == 1 else patches


def _mosaic(tiles, n_cols, pad=1, fill=1.0):
    """Tile (n, h, w[, C]) images into one (rows*(h+pad)+pad, cols*(w+pad)+pad[, C]) image."""
    n, h, w = tiles.shape[:3]
    n_rows = math.ceil(n / n_cols)
    shape = (n_rows * (h + pad) + pad, n_cols * (w + pad) + pad) + tiles.shape[3:]
    out = np.full(shape, fill, dtype=np.float64)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, n_cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = tile
    return out


def plot_atoms(model, n=64, order="usage", ax=None):
    """Show dictionary atoms as image patches in pixel space, in one mosaic.

    Atom pixels are ``model.dictionary_ @ model.coloring_`` (the ZCA coloring takes whitened
    vectors back to pixels), reshaped from the channel-major layout (C, p, p) to (p, p, C)
    (grayscale when C == 1), and each scaled to its own min / max.

    Parameters
    ----------
    model : smt.SMT
        A fitted model with ``dictionary_`` of shape (K, D) and ``coloring_`` of shape (D, D),
        ``D = C * patch_size**2``.
    n : int, default=64
        Number of atoms shown (at most K), on a near-square grid.
    order : {"usage", "index"}, default="usage"
        ``"usage"``: the most used atoms first (``model.atom_usage_``, shape (K,), descending;
        ties by index); ``"index"``: atoms 0 .. n-1.
    ax : matplotlib Axes or None, default=None
        Axes to draw into; a new figure when None.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Its axes hold one image of shape (rows * (p + 1) + 1, cols * (p + 1) + 1[, C]), atoms
        separated by white 1-pixel lines.
    """
    if order not in ("usage", "index"):
        raise ValueError(f"order must be 'usage' or 'index', got {order!r}")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    plt = _pyplot()
    patches = atom_images(model)
    k = len(patches)
    n = min(int(n), k)
    if order == "usage":
        _check_fitted(model, ("atom_usage_",))
        idx = np.argsort(-_numpy(model.atom_usage_), kind="stable")[:n]
    else:
        idx = np.arange(n)
    n_cols = math.ceil(math.sqrt(n))
    mosaic = _mosaic(patches[idx], n_cols)
    if ax is None:
        size = min(8.0, max(3.0, 0.6 * n_cols))
        fig, ax = plt.subplots(figsize=(size, size * mosaic.shape[0] / mosaic.shape[1]))
    else:
        fig = ax.figure
    if mosaic.ndim == 2:
        ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{n} of {k} atoms" + (" (most used first)" if order == "usage" else ""))
    return fig


def _show_image(ax, image):
    image = _numpy(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype == np.uint8:
        vmin, vmax = 0, 255
    elif image.dtype == bool:
        image, vmin, vmax = image.astype(np.float32), 0.0, 1.0
    else:
        image = image.astype(np.float64)
        lo, hi = float(image.min()), float(image.max())
        vmin, vmax = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
        if image.ndim == 3:  # RGB floats must lie in [0, 1] for imshow
            image = (image - vmin) / ((vmax - vmin) or 1.0)
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_neighbors(queries, query_embeddings, references, reference_embeddings, n_neighbors=8,
                   n_queries=6, *, query_labels=None, reference_labels=None):
    """Show queries next to their nearest references by cosine similarity of embeddings.

    Parameters
    ----------
    queries : array-like of shape (n_q, H, W) or (n_q, H, W, C)
        Query images, uint8 in 0-255 or float (shown on [0, 1] when they lie in it).
    query_embeddings : array-like or torch.Tensor of shape (n_q, d)
    references : array-like of shape (n_r, H, W) or (n_r, H, W, C)
        Reference images, same conventions as ``queries``.
    reference_embeddings : array-like or torch.Tensor of shape (n_r, d)
    n_neighbors : int, default=8
        Neighbours per query (at most n_r), most similar first (ties: lower index).
    n_queries : int, default=6
        The first ``n_queries`` queries are shown (at most n_q), one per row.
    query_labels, reference_labels : array-like of shape (n_q,) / (n_r,), optional
        Shown in the titles when given.

    Returns
    -------
    fig : matplotlib.figure.Figure
        A grid of ``n_queries`` rows by ``1 + n_neighbors`` axes: each row the query, then its
        neighbours titled with their cosine similarity.
    """
    plt = _pyplot()
    qe = _numpy(query_embeddings).astype(np.float64)
    re = _numpy(reference_embeddings).astype(np.float64)
    if qe.ndim != 2 or re.ndim != 2 or qe.shape[1] != re.shape[1]:
        raise ValueError(f"embeddings must be 2-D with the same width, got {qe.shape} and {re.shape}")
    if len(queries) != len(qe) or len(references) != len(re):
        raise ValueError(f"{len(queries)} queries with {len(qe)} embeddings, "
                         f"{len(references)} references with {len(re)} embeddings")
    n_q = min(int(n_queries), len(qe))
    n_nb = min(int(n_neighbors), len(re))
    if n_q < 1 or n_nb < 1:
        raise ValueError("need at least one query and one neighbour")
    q = qe[:n_q] / np.maximum(np.linalg.norm(qe[:n_q], axis=1, keepdims=True), NORM_EPS)
    r = re / np.maximum(np.linalg.norm(re, axis=1, keepdims=True), NORM_EPS)
    sims = q @ r.T  # (n_q, n_r)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :n_nb]
    fig, axes = plt.subplots(n_q, 1 + n_nb, figsize=(1.1 * (1 + n_nb), 1.25 * n_q), squeeze=False)
    for i in range(n_q):
        _show_image(axes[i, 0], queries[i])
        axes[i, 0].set_title("query" + (f" {_numpy(query_labels)[i]}" if query_labels is not None else ""),
                             fontsize=8)
        for spine in axes[i, 0].spines.values():
            spine.set_edgecolor("tab:blue")
            spine.set_linewidth(2)
        for j, ref in enumerate(nearest[i]):
            ax = axes[i, 1 + j]
            _show_image(ax, references[ref])
            title = f"{sims[i, ref]:.2f}"
            if reference_labels is not None:
                title = f"{_numpy(reference_labels)[ref]}: {title}"
            ax.set_title(title, fontsize=8)
    fig.suptitle("nearest neighbours by cosine similarity of the embeddings", fontsize=9)
    fig.tight_layout()
    return fig


def plot_spectrum(model, ax=None):
    """Plot the slowness of each embedding dimension (the generalized eigenvalues).

    Parameters
    ----------
    model : smt.SMT
        A fitted model; ``model.eigenvalues_`` has shape (d,), ascending (the slowest, most
        useful directions first; the ``n_skip`` skipped directions are not included).
    ax : matplotlib Axes or None, default=None
        Axes to draw into; a new figure when None.

    Returns
    -------
    fig : matplotlib.figure.Figure
        One line of d points: eigenvalue against embedding dimension.
    """
    _check_fitted(model, ("eigenvalues_",))
    plt = _pyplot()
    values = _numpy(model.eigenvalues_)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    ax.plot(np.arange(len(values)), values, marker="o", markersize=3)
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("slowness (eigenvalue)")
    ax.set_title(f"SMT spectrum ({len(values)} dimensions)")
    ax.grid(alpha=0.3)
    return fig


def plot_word_map(model, words=None, n_words=150, random_state=0, ax=None):
    """2-D map of word vectors (t-SNE on cosine distances), each point labelled with its word.

    Parameters
    ----------
    model : smt.SMTWordEmbedding
        Fitted; uses ``vocabulary_`` and ``embedding_`` (V, d).
    words : sequence of str or None, default=None
        Words to show; None takes the ``n_words`` most frequent alphabetic words.
    n_words : int, default=150
    random_state : int, default=0
        Seeds t-SNE.
    ax : matplotlib Axes or None, default=None

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    from sklearn.manifold import TSNE

    _check_fitted(model, ("embedding_", "vocabulary_"))
    if words is None:
        words = [w for w in model.vocabulary_ if w.isalpha()][:n_words]
    if len(words) < 5:
        raise ValueError(f"a word map needs at least 5 words, got {len(words)}")
    vectors = model.transform(list(words))
    xy = TSNE(n_components=2, metric="cosine", init="pca", perplexity=min(30, len(words) - 1) / 2,
              random_state=random_state).fit_transform(vectors)
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 9))
    else:
        fig = ax.figure
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5)
    for (x, y), word in zip(xy, words):
        ax.annotate(word, (x, y), fontsize=7, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"SMT word embedding: t-SNE of {len(words)} words")
    return fig
