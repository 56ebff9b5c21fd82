"""Weighted k-nearest-neighbour evaluation (the paper's kNN protocol).

This is the protocol of solo-learn's ``WeightedKNNClassifier`` that the SMT
paper uses to report kNN accuracy:

* embeddings are L2-normalised and compared with the cosine similarity;
* each query keeps its ``k`` (default 30) most similar reference (training)
  embeddings;
* neighbour ``j`` votes for its label with weight ``exp(s_j / T)`` (default
  ``T = 0.03``), so the score of class ``c`` is
  ``sum_{j in top-k, y_j = c} exp(s_j / T)``;
* the prediction is the class with the highest score, and top-5 accuracy
  counts a query as correct when its class is among the five highest scores.

The reference set of the paper's large runs does not fit in memory
(e.g. 60,000 x 55,296 float32 values is 13 GB), so the core of this module is
:class:`StreamingKNN`, which holds the (normalised) queries on the device and
merges a running top-k as reference chunks are streamed through
:meth:`StreamingKNN.update`.  :func:`knn_accuracy` wraps it for the common
"train embeddings, test embeddings -> accuracy" call and accepts either whole
arrays (which may be ``numpy.memmap``) or an iterable of chunks.

Ties are broken deterministically: among equal similarities the reference with
the lower global index (its position in the order the references were
streamed) is kept, whatever the chunking and the device.  Similarities are
float32 matrix products, so the same (query, reference) pair may come out one
ulp apart under a different chunking or query batching (BLAS kernels depend on
the shapes); neighbours and predictions change only for pairs that close.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from smt._device import resolve_device
from smt._validation import DEVICE, Integral, Interval, Real, check_param, check_params

__all__ = ["StreamingKNN", "knn_accuracy"]

_EPS = 1e-12
_MAX_REFERENCES = 2**32  # global indices are packed into the low 32 bits of a key
_LOW32 = 0xFFFFFFFF
_INT32_MAGNITUDE = 0x7FFFFFFF


# --------------------------------------------------------------------------- #
# Input helpers
# --------------------------------------------------------------------------- #
def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError("expected a numeric array, got dtype object")
    if not arr.flags.writeable:  # e.g. a read-only memmap slice; avoids torch's warning
        arr = arr.copy()
    return torch.as_tensor(arr)


def _to_float_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """Cast ``x`` (numpy / torch / array-like) to a 2-D float32 tensor on ``device``."""
    t = _as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.numel() and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    t = t.to(device=device, dtype=torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds finite values beyond float32's range (+-3.4e38), where the "
                         f"similarities are computed: rescale it")
    return t


def _to_label_tensor(y: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    """Cast labels to a 1-D int64 tensor of length ``n`` on ``device``."""
    if y is None:
        raise ValueError(f"{name} is required")
    t = _as_tensor(y)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} embeddings")
    if t.is_floating_point():
        if t.numel() and not bool((t == torch.round(t)).all()):
            raise ValueError(f"{name} must be integer class indices")
    elif t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class indices, got dtype {t.dtype}")
    if t.numel() and t.is_floating_point() and float(t.abs().max()) >= 2**63:
        raise ValueError(f"{name} holds a class index beyond int64 ({float(t.abs().max()):g})")
    t = t.to(device=device, dtype=torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must be non-negative class indices")
    return t


_PARAMS = {"k": [Interval(Integral, 1, None, closed="left")],
           "temperature": [Interval(Real, 0, None, closed="neither")],
           "device": DEVICE,
           "query_batch_size": [Interval(Integral, 1, None, closed="left")],
           "batch_size": [Interval(Integral, 1, None, closed="left")]}


def _check_k_temperature(k: int, temperature: float, caller: str = "StreamingKNN") -> None:
    check_params({"k": k, "temperature": temperature}, _PARAMS, caller)


def _check_batch_size(value: int, name: str, caller: str = "StreamingKNN") -> int:
    return int(check_param(name, value, _PARAMS[name], caller))


# --------------------------------------------------------------------------- #
# Order-preserving (similarity, index) keys
# --------------------------------------------------------------------------- #
# A similarity s (float32) and a global reference index i are packed into one
# int64 key whose integer order is "s descending, then i ascending".  torch.topk
# over unique keys is then deterministic on every device, which gives the
# lower-index-wins tie-breaking for free and stays exact across chunkings.
def _encode(sims: torch.Tensor, global_idx: torch.Tensor) -> torch.Tensor:
    sims = sims.contiguous() + 0.0  # turns -0.0 into +0.0 so that both compare equal
    bits = sims.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ _INT32_MAGNITUDE, bits).to(torch.int64)
    return (ordered << 32) | (_LOW32 - global_idx)


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ _INT32_MAGNITUDE, ordered)
    sims = bits.view(torch.float32)
    global_idx = _LOW32 - (keys & _LOW32)
    return sims, global_idx


# --------------------------------------------------------------------------- #
# Streaming classifier
# --------------------------------------------------------------------------- #
class StreamingKNN:
    """Weighted cosine kNN whose reference set is streamed in chunks.

    The queries are cast once to float32 on ``device`` and L2-normalised.  Each
    call to :meth:`update` compares them (``query_batch_size`` rows at a time)
    with one chunk of reference embeddings and merges the chunk into a running
    top-k per query, so memory is bounded by
    ``n_queries * (n_features + 2 k)`` plus
    ``query_batch_size * chunk_size`` for the similarity block, whatever the
    total number of references.

    Parameters
    ----------
    queries : array-like or torch.Tensor, shape (n_queries, n_features)
        Embeddings to classify (the test set).  Need not be normalised.
    k : int, default 30
        Number of neighbours.  If fewer references are streamed, all are used.
    temperature : float, default 0.03
        Vote temperature ``T``: neighbour ``j`` votes with ``exp(s_j / T)``.
    device : str or torch.device, default "auto"
        "auto" means CUDA when available, else CPU.
    query_batch_size : int, default 1024
        Number of queries compared with a reference chunk at once.

    Attributes
    ----------
    n_queries, n_features : int
    n_references : int
        Number of reference embeddings streamed so far; the global index of a
        reference is its position in this stream.
    classes_ : torch.Tensor of int64
        The distinct reference labels streamed so far, sorted; :meth:`predict` and
        :meth:`accuracy` vote over these only, so their memory follows the number of classes
        present, not the largest label.
    n_classes_seen : int
        ``1 + max`` reference label streamed so far (0 before any update).

    Examples
    --------
    >>> import numpy as np
    >>> knn = StreamingKNN(np.array([[1.0, 0.1]]), k=2, device="cpu")
    >>> knn.update(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    >>> knn.update(np.array([[1.0, 0.2]]), np.array([1]))
    >>> knn.neighbors()[2].tolist()   # global indices of the 2 nearest references
    [[2, 0]]
    >>> knn.predict().tolist()
    [1]
    """

    def __init__(
        self,
        queries: Any,
        *,
        k: int = 30,
        temperature: float = 0.03,
        device: str | torch.device | None = "auto",
        query_batch_size: int = 1024,
    ) -> None:
        _check_k_temperature(k, temperature)
        self.k = int(k)
        self.temperature = float(temperature)
        self.device = resolve_device(check_param("device", device, DEVICE, "StreamingKNN"))
        self.query_batch_size = _check_batch_size(query_batch_size, "query_batch_size")
        q = _to_float_tensor(queries, "queries", self.device)
        if q.shape[0] == 0:
            raise ValueError("queries is empty")
        if q.shape[1] == 0:
            raise ValueError("queries has zero features")
        self._queries = F.normalize(q, p=2.0, dim=1, eps=_EPS)
        self.n_queries, self.n_features = map(int, q.shape)
        self.n_references = 0
        self.n_classes_seen = 0
        self.classes_ = torch.empty(0, dtype=torch.int64, device=self.device)
        # running top-k, sorted by (similarity desc, global index asc)
        self._keys = torch.empty((self.n_queries, 0), dtype=torch.int64, device=self.device)
        self._labels = torch.empty((self.n_queries, 0), dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ #
    def update(self, reference_chunk: Any, reference_labels: Any) -> None:
        """Merge one chunk of reference embeddings into the running top-k.

        Parameters
        ----------
        reference_chunk : array-like or torch.Tensor, shape (m, n_features)
            Reference (training) embeddings; need not be normalised.  Their
            global indices are ``n_references, ..., n_references + m - 1``.
        reference_labels : array-like or torch.Tensor of int, shape (m,)
            Non-negative class indices.
        """
        refs = _to_float_tensor(reference_chunk, "reference_chunk", self.device)
        m = int(refs.shape[0])
        if refs.shape[1] != self.n_features:
            raise ValueError(
                f"reference_chunk has {refs.shape[1]} features but the queries have "
                f"{self.n_features}"
            )
        labels = _to_label_tensor(reference_labels, "reference_labels", m, self.device)
        if m == 0:
            return
        if self.n_references + m > _MAX_REFERENCES:
            raise ValueError(f"at most {_MAX_REFERENCES} reference embeddings are supported")
        refs = F.normalize(refs, p=2.0, dim=1, eps=_EPS)

        k_old = self._keys.shape[1]
        k_new = min(self.k, k_old + m)
        global_idx = torch.arange(self.n_references, self.n_references + m,
                                  dtype=torch.int64, device=self.device)
        new_keys = torch.empty((self.n_queries, k_new), dtype=torch.int64, device=self.device)
        new_labels = torch.empty_like(new_keys)
        k_chunk = min(self.k, m)
        refs_t = refs.T
        for start in range(0, self.n_queries, self.query_batch_size):
            stop = min(start + self.query_batch_size, self.n_queries)
            sims = self._queries[start:stop] @ refs_t                      # (b, m)
            cand_keys, cand_labels = self._chunk_topk(sims, global_idx, labels, k_chunk)
            del sims
            keys = torch.cat([self._keys[start:stop], cand_keys], dim=1)
            top_keys, pos = torch.topk(keys, k_new, dim=1, largest=True, sorted=True)
            new_keys[start:stop] = top_keys
            new_labels[start:stop] = torch.gather(
                torch.cat([self._labels[start:stop], cand_labels], dim=1), 1, pos)
        self._keys, self._labels = new_keys, new_labels
        self.n_references += m
        self.n_classes_seen = max(self.n_classes_seen, int(labels.max()) + 1)
        self.classes_ = torch.unique(torch.cat([self.classes_, labels]))

    @staticmethod
    def _chunk_topk(
        sims: torch.Tensor, global_idx: torch.Tensor, labels: torch.Tensor, k_chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and labels of the ``k_chunk`` best references of one chunk, per query.

        A float top-k is exact whenever no row has a tie at its k-th value; only
        then (rare: duplicated references) are keys built for the whole block.
        """
        m = sims.shape[1]
        if k_chunk < m:
            vals, pos = torch.topk(sims, k_chunk, dim=1, largest=True, sorted=False)
            boundary_tie = ((sims >= vals.min(dim=1, keepdim=True).values).sum(dim=1) > k_chunk).any()
            if not bool(boundary_tie):
                return _encode(vals, global_idx[pos]), labels[pos]
        keys = _encode(sims, global_idx)
        if k_chunk < m:
            keys, pos = torch.topk(keys, k_chunk, dim=1, largest=True, sorted=False)
            return keys, labels[pos]
        return keys, labels.expand(sims.shape[0], m)

    # ------------------------------------------------------------------ #
    def _require_references(self) -> None:
        if self.n_references == 0:
            raise ValueError("the reference set is empty: call update() with at least one row")

    def neighbors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Current nearest references of every query.

        Returns
        -------
        similarities : torch.Tensor, float32, shape (n_queries, k_eff)
            Cosine similarities, sorted in decreasing order (ties: lower
            reference index first).  ``k_eff = min(k, n_references)``.
        labels : torch.Tensor, int64, shape (n_queries, k_eff)
        indices : torch.Tensor, int64, shape (n_queries, k_eff)
            Global reference indices.
        """
        self._require_references()
        sims, idx = _decode(self._keys)
        return sims, self._labels.clone(), idx

    def predict_scores(self, n_classes: int | None = None, *, stabilize: bool = False,
                       k: int | None = None, temperature: float | None = None) -> torch.Tensor:
        """Class votes ``sum_{j in top-k, y_j = c} exp(s_j / T)``.

        Parameters
        ----------
        n_classes : int, optional
            Number of columns; defaults to :attr:`n_classes_seen`.  Must exceed
            every reference label.
        stabilize : bool, default False
            Use ``exp((s_j - max_j s_j) / T)`` instead, i.e. divide every row by
            ``exp(max_j s_j / T)``.  The ranking of classes is unchanged but
            float32 cannot overflow (plain votes overflow once ``T < 0.0113``).
        k : int, optional
            Vote over only the first ``k`` of the kept neighbours (at most the
            ``k`` given at construction), e.g. to score another protocol from
            the same pass over the references.
        temperature : float, optional
            T of this vote; defaults to the one given at construction.

        Returns
        -------
        torch.Tensor, float32, shape (n_queries, n_classes), on :attr:`device`.
        """
        self._require_references()
        if n_classes is None:
            n_classes = self.n_classes_seen
        if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < self.n_classes_seen:
            raise ValueError(
                f"n_classes={n_classes!r} is smaller than 1 + the largest reference label "
                f"({self.n_classes_seen})"
            )
        weights, labels = self._vote(k, temperature, stabilize)
        scores = torch.zeros((self.n_queries, int(n_classes)), dtype=torch.float32, device=self.device)
        return scores.scatter_add_(1, labels, weights)

    def _vote(self, k, temperature, stabilize):
        """Vote weights and labels of the first ``k`` neighbours, each (n_queries, k)."""
        k = self.k if k is None else k
        temperature = self.temperature if temperature is None else temperature
        _check_k_temperature(k, temperature, "StreamingKNN vote")
        if k > self.k:
            raise ValueError(f"k={k} exceeds the {self.k} neighbours this StreamingKNN keeps")
        sims, _ = _decode(self._keys)
        sims, labels = sims[:, :k], self._labels[:, :k]
        if stabilize:
            sims = sims - sims[:, :1]  # column 0 holds the row maximum
        return torch.exp(sims / temperature), labels

    def _class_scores(self, classes, k=None, temperature=None):
        """Stabilised votes for the sorted labels ``classes`` only, (n_queries, len(classes)): sized
        by the labels present, not by the largest label (one label of 2,000,000 is one column)."""
        weights, labels = self._vote(k, temperature, stabilize=True)
        scores = torch.zeros((self.n_queries, len(classes)), dtype=torch.float32, device=self.device)
        return scores.scatter_add_(1, torch.searchsorted(classes, labels), weights)

    def predict(self) -> torch.Tensor:
        """Predicted labels, shape (n_queries,), int64 (ties: lower class index)."""
        self._require_references()
        return self.classes_[self._class_scores(self.classes_).argmax(dim=1)]

    def ranked_classes(self, n_classes: int | None = None, **vote) -> torch.Tensor:
        """Classes sorted by decreasing vote, shape (n_queries, n_classes), int64.

        Classes with equal votes (including classes with no vote) are ordered
        by increasing class index, so the result is deterministic. ``vote``:
        ``k`` and ``temperature`` as in :meth:`predict_scores`.
        """
        scores = self.predict_scores(n_classes, stabilize=True, **vote)
        return torch.sort(scores, dim=1, descending=True, stable=True).indices

    def accuracy(self, labels: Any, topk: Iterable[int] = (1, 5), **vote) -> dict[str, float]:
        """Top-k accuracies in percent against the true query labels.

        Parameters
        ----------
        labels : array-like or torch.Tensor of int, shape (n_queries,)
        topk : iterable of int, default (1, 5)
            A query counts as correct for ``t`` when its label is among the
            ``t`` highest-voted classes (``t`` is capped at the number of
            classes).
        **vote
            ``k`` and ``temperature`` of the vote, as in :meth:`predict_scores`.

        Returns
        -------
        dict mapping ``"top{t}"`` to a float in [0, 100].
        """
        y = _to_label_tensor(labels, "labels", self.n_queries, self.device)
        topk = tuple(topk)
        for t in topk:
            if isinstance(t, bool) or int(t) != t or t < 1:
                raise ValueError(f"topk entries must be positive integers, got {t!r}")
        self._require_references()
        n_classes = max(self.n_classes_seen, int(y.max()) + 1)
        # The rank of each query's label among classes 0 .. n_classes - 1 in the order of
        # ranked_classes, counted over the labels present only: a label absent from both the
        # references and the queries has no vote, so it comes before y only when y has none either
        # and is smaller (y - col of them do).
        classes = torch.unique(torch.cat([self.classes_, y]))
        scores = self._class_scores(classes, **vote)
        col = torch.searchsorted(classes, y)[:, None]
        own = scores.gather(1, col)
        before = torch.arange(len(classes), device=self.device)[None, :] < col
        rank = (scores > own).sum(1) + ((scores == own) & before).sum(1)
        rank += torch.where(own[:, 0] == 0, y - col[:, 0], torch.zeros_like(y))
        out = {}
        for t in topk:
            correct = rank < min(int(t), n_classes)
            out[f"top{int(t)}"] = 100.0 * float(correct.sum()) / self.n_queries
        return out


# --------------------------------------------------------------------------- #
# One-call protocol
# --------------------------------------------------------------------------- #
def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def knn_accuracy(
    train: Any,
    train_labels: Any,
    test: Any,
    test_labels: Any,
    *,
    k: int = 30,
    temperature: float = 0.03,
    topk: Iterable[int] = (1, 5),
    device: str | torch.device | None = "auto",
    batch_size: int = 8192,
    query_batch_size: int = 1024,
) -> dict[str, float]:
    """Weighted-kNN top-k accuracy of ``test`` against the reference set ``train``.

    Parameters
    ----------
    train : numpy.ndarray or torch.Tensor, shape (n_train, n_features), or iterable
        Reference embeddings.  An array (a ``numpy.memmap`` works) is streamed
        ``batch_size`` rows at a time.  Anything else must be an iterable of
        ``(embeddings_chunk, labels_chunk)`` pairs with shapes
        ``(m_i, n_features)`` and ``(m_i,)``, e.g. a generator that computes
        train embeddings chunk by chunk; then ``train_labels`` must be None.
    train_labels : array-like of int, shape (n_train,), or None
    test : array-like or torch.Tensor, shape (n_test, n_features)
    test_labels : array-like of int, shape (n_test,)
    k, temperature : see :class:`StreamingKNN` (defaults 30 and 0.03).
    topk : iterable of int, default (1, 5)
    device : str or torch.device, default "auto"
    batch_size : int, default 8192
        Reference rows per chunk when ``train`` is an array.
    query_batch_size : int, default 1024
        Test rows compared with a chunk at once.

    Returns
    -------
    dict
        ``{"top1": float, "top5": float}`` (keys follow ``topk``), in percent.

    Examples
    --------
    >>> import numpy as np
    >>> train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> knn_accuracy(train, [0, 0, 1, 1], np.array([[1.0, 0.2], [0.2, 1.0]]), [0, 1],
    ...              k=2, device="cpu")
    {'top1': 100.0, 'top5': 100.0}
    >>> chunks = ((train[i:i + 1], [label]) for i, label in enumerate([0, 0, 1, 1]))
    >>> knn_accuracy(chunks, None, np.array([[1.0, 0.2]]), [0], k=2, device="cpu")["top1"]
    100.0
    """
    _check_k_temperature(k, temperature, "knn_accuracy")
    batch_size = _check_batch_size(batch_size, "batch_size", "knn_accuracy")
    knn = StreamingKNN(test, k=k, temperature=temperature, device=device,
                       query_batch_size=query_batch_size)
    # validate test labels before the (possibly long) pass over the references
    _to_label_tensor(test_labels, "test_labels", knn.n_queries, knn.device)
    if _is_array(train):
        if train_labels is None:
            raise ValueError("train_labels is required when train is an array")
        if train.ndim != 2:
            raise ValueError(f"train must be 2-D (n_train, n_features), got shape {tuple(train.shape)}")
        n_train = int(train.shape[0])
        if len(train_labels) != n_train:
            raise ValueError(f"train_labels has {len(train_labels)} entries but train has {n_train} rows")
        for start in range(0, n_train, batch_size):
            knn.update(train[start:start + batch_size], train_labels[start:start + batch_size])
    else:
        if train_labels is not None:
            raise ValueError(
                "train_labels must be None when train is an iterable of (embeddings, labels) chunks"
            )
        if not isinstance(train, Iterable):
            raise TypeError("train must be an array or an iterable of (embeddings, labels) pairs")
        for item in train:
            try:
                chunk, chunk_labels = item
            except (TypeError, ValueError):
                raise TypeError(
                    "each item of train must be an (embeddings_chunk, labels_chunk) pair"
                ) from None
            knn.update(chunk, chunk_labels)
    return knn.accuracy(test_labels, topk=topk)
