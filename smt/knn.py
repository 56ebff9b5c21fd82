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

import copy as _copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from smt._device import resolve_device, warn_emulated_bf16

try:  # pairs read in place, in parallel; torch's gathers otherwise (the same similarities +- 1 ulp)
    from smt._pair_dots import pair_dots
except ImportError:  # numba is optional: pip install "sparse-manifold-transform[fast]"
    pair_dots = None
from smt._norm import NORM_EPS
from smt._validation import DEVICE, Integral, Interval, Real, StrOptions, all_finite, check_param, check_params

__all__ = ["PRECISIONS", "StreamingKNN", "ReferenceDensity", "knn_accuracy"]

PRECISIONS = ("float32", "bf16")

_MAX_REFERENCES = 2**32  # global indices are packed into the low 32 bits of a key
_LOW32 = 0xFFFFFFFF
_INT32_MAGNITUDE = 0x7FFFFFFF
_MAX_SCORE_BYTES = 4 << 30  # predict_scores' (queries, class indices) votes: refuse beyond this
_NO_KEY = torch.iinfo(torch.int64).min  # pads candidate lists; never enters a full top-k
# Error bound of the bf16 screen (see StreamingKNN._screen): bfloat16 keeps 8 significant bits,
# so rounding the GEMM's output moves it by at most 2^-9 of its value (2^-8 leaves a margin).
_BF16_OUTPUT_ERROR = 2.0**-8
# float32 accumulation over n terms: lambda * sqrt(n) * u (Higham & Mary, SIAM J. Sci. Comput.
# 2019); lambda = 10 fails with probability below 1e-21.  Counted twice: once for the bf16 GEMM's
# float32 accumulator, once for the float32 similarities the screen is compared against.
_ACCUMULATION_LAMBDA = 2 * 10.0
_FLOAT32_UNIT = 2.0**-24
# (query, reference) pairs rescored in float32 at once; bounds the two gathered (pairs, d) blocks.
_RESCORE_PAIRS = 256
_BF16_ALIGN = 64  # the screen's GEMM width is padded to a multiple of this


# --------------------------------------------------------------------------- #
# Input helpers
# --------------------------------------------------------------------------- #
def _as_tensor(x: Any, name: str = "input") -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_meta:
            raise ValueError("a tensor on torch's meta device holds no values: pass one with data")
        return x.detach()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":  # object, strings, dates: torch's own error would not name the input
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if not arr.flags.writeable:  # e.g. a read-only memmap slice; avoids torch's warning
        arr = arr.copy()
    return torch.as_tensor(arr)


def _to_float_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """Cast ``x`` (numpy / torch / array-like) to a 2-D float32 tensor on ``device``."""
    t = _as_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.is_floating_point() and not all_finite(t):
        raise ValueError(f"{name} contains NaN or infinite values")
    cast = t.to(device=device, dtype=torch.float32)
    if cast.dtype != t.dtype and not all_finite(cast):
        raise ValueError(f"{name} holds finite values beyond float32's range (+-3.4e38), where the "
                         f"similarities are computed: rescale it")
    return cast


def _to_label_tensor(y: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    """Cast labels to a 1-D int64 tensor of length ``n`` on ``device``."""
    if y is None:
        raise ValueError(f"{name} is required")
    t = _as_tensor(y, name)
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
           "batch_size": [Interval(Integral, 1, None, closed="left")],
           "precision": [StrOptions(set(PRECISIONS))],
           "copy": ["boolean"]}


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


def _rescore(queries: torch.Tensor, refs: torch.Tensor, rows: torch.Tensor,
             cols: torch.Tensor) -> torch.Tensor:
    """float32 similarities ``queries[rows[p]] . refs[cols[p]]``, shape (n_pairs,)."""
    if pair_dots is not None and queries.device.type == "cpu":
        return pair_dots(queries, refs, rows, cols)
    sims = torch.empty(rows.shape[0], dtype=torch.float32, device=queries.device)
    for p in range(0, rows.shape[0], _RESCORE_PAIRS):
        sims[p:p + _RESCORE_PAIRS] = torch.einsum(
            "pd,pd->p", queries[rows[p:p + _RESCORE_PAIRS]], refs[cols[p:p + _RESCORE_PAIRS]])
    return sims


def _unit_rows(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Unit rows of ``x`` (``F.normalize``'s arithmetic: zero rows stay zero), in place if asked."""
    norm = torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True).clamp_min_(NORM_EPS)
    return x.div_(norm) if inplace else x / norm


def _bf16_copy(x: torch.Tensor, bias_column: bool = False) -> torch.Tensor:
    """bfloat16 copy of rows ``x`` (n, d), shape (n, d + pad) with ``d + pad`` a multiple of
    ``_BF16_ALIGN`` and zeros after column ``d - 1`` (column ``d`` holds 1 when ``bias_column``)."""
    n, d = x.shape
    width = -(-(d + 1) // _BF16_ALIGN) * _BF16_ALIGN
    out = torch.empty((n, width), dtype=torch.bfloat16, device=x.device)
    out[:, :d] = x
    out[:, d:] = 0
    if bias_column:
        out[:, d] = 1.0
    return out


def _bf16_rows(x: torch.Tensor, bias_column: bool = False):
    """bfloat16 copy of unit rows ``x`` (n, d) with one spare column, their norms and errors.

    Returns the copy (:func:`_bf16_copy`), ``|x~|`` and ``|x - x~|`` per row
    (float32, the latter rounded up by 0.1 % to cover its own float32
    evaluation).
    """
    n, d = x.shape
    out = _bf16_copy(x, bias_column)
    norm = torch.empty(n, dtype=torch.float32, device=x.device)
    error = torch.empty_like(norm)
    for start in range(0, n, 1024):  # bounds the float32 temporary
        rounded = out[start:start + 1024, :d].float()
        norm[start:start + 1024] = torch.linalg.vector_norm(rounded, dim=1)
        error[start:start + 1024] = torch.linalg.vector_norm(rounded.sub_(x[start:start + 1024]), dim=1)
    return out, norm, error.mul_(1.001)


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
    precision : {"float32", "bf16"}, default "float32"
        "bf16" screens each chunk with a bfloat16 GEMM (several times the
        float32 rate on CPUs with bf16 units and on GPUs) and recomputes in
        float32 only the similarities that a rigorous bound on the screen's
        error cannot exclude from the running top-k.  The neighbours and the
        votes are the float32 ones up to float32 rounding: every kept
        similarity is the float32 rounding of a float64 dot product of the
        unit float32 vectors.  Only the first chunk, before every query holds
        ``k`` neighbours, is compared in float32 throughout.  Where the device
        has no bf16 units (an AVX2-only CPU) the screen is emulated, slower
        than float32, and the constructor warns.
    copy : bool, default True
        If False, float32 queries and reference chunks already on ``device``
        are L2-normalised in place (the caller's arrays are overwritten with
        their unit rows) instead of into a copy: the queries are then held
        once, not twice, while the kNN is built (50,000 x 55,296 values are
        11 GB).  Other inputs are cast into a new tensor either way.

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
    n_rescored : int
        (query, reference) similarities the bf16 screen sent back to float32
        (0 with ``precision="float32"``); ``n_rescored / (n_queries *
        n_references)`` is the fraction of the float32 work left.

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
        precision: str = "float32",
        copy: bool = True,
    ) -> None:
        _check_k_temperature(k, temperature, "StreamingKNN.predict_scores")
        self.k = int(k)
        self.temperature = float(temperature)
        self.device = resolve_device(check_param("device", device, DEVICE, "StreamingKNN"))
        self.query_batch_size = _check_batch_size(query_batch_size, "query_batch_size")
        self.precision = check_param("precision", precision, _PARAMS["precision"], "StreamingKNN")
        warn_emulated_bf16(self.precision, self.device, "StreamingKNN")
        self.copy = check_param("copy", copy, _PARAMS["copy"], "StreamingKNN")
        q = _to_float_tensor(queries, "queries", self.device)
        if q.shape[0] == 0:
            raise ValueError("queries is empty")
        if q.shape[1] == 0:
            raise ValueError("queries has zero features")
        self._queries = self._normalized(q)
        del q
        self.n_queries, self.n_features = map(int, self._queries.shape)
        if precision == "bf16":
            # Only the roundings' norms and errors are kept: _screen rounds each query batch again,
            # which costs what copying a kept bf16 copy cost, and saves 2 bytes per query value
            # (1.1 GB for CIFAR-10's 10,000 test images and one model at d 384).
            parts = [_bf16_rows(self._queries[i:i + 1024])[1:] for i in range(0, self.n_queries, 1024)]
            self._queries_bf16_norm = torch.cat([norm for norm, _ in parts])
            self._queries_bf16_error = torch.cat([error for _, error in parts])
        self._clear()

    def _clear(self) -> None:
        """No reference streamed yet."""
        self.n_references = 0
        self.n_classes_seen = 0
        self.classes_ = torch.empty(0, dtype=torch.int64, device=self.device)
        self.n_rescored = 0
        # running top-k, sorted by (similarity desc, global index asc)
        self._keys = torch.empty((self.n_queries, 0), dtype=torch.int64, device=self.device)
        self._labels = torch.empty((self.n_queries, 0), dtype=torch.int64, device=self.device)

    def sharing_queries(self, *, k: int | None = None, temperature: float | None = None) -> "StreamingKNN":
        """A new kNN of the same queries, with no reference streamed yet.

        The normalised queries are shared, not copied, so several kNNs of one
        query set (one per ``penalty`` of :meth:`update`, say) hold it once.
        ``k`` and ``temperature`` default to this kNN's; device, batch size
        and precision are this kNN's.
        """
        k = self.k if k is None else k
        temperature = self.temperature if temperature is None else temperature
        _check_k_temperature(k, temperature, "StreamingKNN.sharing_queries")
        twin = _copy.copy(self)  # shallow: the query tensors are shared
        twin.k, twin.temperature = int(k), float(temperature)
        twin._clear()
        return twin

    # ------------------------------------------------------------------ #
    def update(self, reference_chunk: Any, reference_labels: Any, penalty: Any = None) -> None:
        """Merge one chunk of reference embeddings into the running top-k.

        Parameters
        ----------
        reference_chunk : array-like or torch.Tensor, shape (m, n_features)
            Reference (training) embeddings; need not be normalised.  Their
            global indices are ``n_references, ..., n_references + m - 1``.
        reference_labels : array-like or torch.Tensor of int, shape (m,)
            Non-negative class indices.
        penalty : array-like or torch.Tensor of float, shape (m,), optional
            Subtracted from every similarity to each reference: neighbours are
            ranked, and vote, by ``s_ij - penalty_j``.  With ``beta`` times
            :class:`ReferenceDensity` this is the reference side of CSLS
            (hubness reduction); the query side is constant per query and
            changes no vote.
        """
        refs = _to_float_tensor(reference_chunk, "reference_chunk", self.device)
        m = int(refs.shape[0])
        if refs.shape[1] != self.n_features:
            raise ValueError(
                f"reference_chunk has {refs.shape[1]} features but the queries have "
                f"{self.n_features}"
            )
        labels = _to_label_tensor(reference_labels, "reference_labels", m, self.device)
        if penalty is not None:
            penalty = _as_tensor(penalty, "penalty")
            if penalty.ndim != 1:
                raise ValueError(f"penalty must be 1-D, one value per reference, got shape {tuple(penalty.shape)}")
            penalty = _to_float_tensor(penalty[:, None], "penalty", self.device)[:, 0]
            if penalty.shape[0] != m:
                raise ValueError(f"penalty has {penalty.shape[0]} values for {m} references")
        if m == 0:
            return
        if self.n_references + m > _MAX_REFERENCES:
            raise ValueError(f"at most {_MAX_REFERENCES} reference embeddings are supported")
        refs = self._normalized(refs)

        k_old = self._keys.shape[1]
        k_new = min(self.k, k_old + m)
        global_idx = torch.arange(self.n_references, self.n_references + m,
                                  dtype=torch.int64, device=self.device)
        new_keys = torch.empty((self.n_queries, k_new), dtype=torch.int64, device=self.device)
        new_labels = torch.empty_like(new_keys)
        k_chunk = min(self.k, m)
        refs_t = refs.T
        # The screen needs every query's k-th similarity as a bar, so it starts once top-k is full.
        screen = self.precision == "bf16" and k_old == self.k
        if screen:
            refs_bf16, refs_bf16_norm, refs_bf16_error = _bf16_rows(refs, bias_column=True)
        for start in range(0, self.n_queries, self.query_batch_size):
            stop = min(start + self.query_batch_size, self.n_queries)
            if screen:
                cand_keys, cand_labels = self._screen(
                    start, stop, refs, refs_bf16, refs_bf16_norm, refs_bf16_error, global_idx, labels, penalty)
            else:
                sims = self._queries[start:stop] @ refs_t                      # (b, m)
                if penalty is not None:
                    sims -= penalty
                cand_keys, cand_labels = self._chunk_topk(sims, global_idx, labels, k_chunk)
                del sims
                if self.precision == "bf16":
                    cand_keys = self._rescored_keys(start, stop, refs, cand_keys, penalty)
            keys = torch.cat([self._keys[start:stop], cand_keys], dim=1)
            top_keys, pos = torch.topk(keys, k_new, dim=1, largest=True, sorted=True)
            new_keys[start:stop] = top_keys
            new_labels[start:stop] = torch.gather(
                torch.cat([self._labels[start:stop], cand_labels], dim=1), 1, pos)
        self._keys, self._labels = new_keys, new_labels
        self.n_references += m
        self.n_classes_seen = max(self.n_classes_seen, int(labels.max()) + 1)
        self.classes_ = torch.unique(torch.cat([self.classes_, labels]))

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Unit rows of ``x``; in place when ``copy`` is False."""
        return _unit_rows(x, inplace=not self.copy)

    def _screen(
        self, start: int, stop: int, refs: torch.Tensor, refs_bf16: torch.Tensor,
        refs_bf16_norm: torch.Tensor, refs_bf16_error: torch.Tensor,
        global_idx: torch.Tensor, labels: torch.Tensor, penalty: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate keys of queries ``start:stop`` from one chunk, screened in bf16.

        Reference ``j`` can enter query ``i``'s top-k only if its similarity
        ``s_ij`` reaches the current k-th one, ``L_i``.  With ``q~, r~`` the
        bfloat16 roundings of the unit vectors ``q, r``,
        ``s - q~.r~ = (q - q~).r + q~.(r - r~)``, so
        ``|s - q~.r~| <= |q - q~| + |q~| |r - r~|`` (Cauchy-Schwarz), plus the
        float32 accumulation and the bf16 rounding of the GEMM's output.  The
        GEMM computes ``q~.r~ - c_i`` with ``c_i = bf16(L_i)`` in an extra
        column, so the outputs that decide are near zero and their rounding is
        tiny.  Every pair that the bound cannot exclude is rescored in float32
        (a dot product per pair: the candidates are a few per query and chunk).

        Returns keys and labels of shape (stop - start, k), padded with keys
        that never enter a full top-k.
        """
        b = stop - start
        bar, _ = _decode(self._keys[start:stop, -1])                 # L_i, exact float32
        c = bar.to(torch.bfloat16)
        q_bf16 = _bf16_copy(self._queries[start:stop])
        q_bf16[:, self.n_features] = -c  # the spare column
        out = (q_bf16 @ refs_bf16.T).float()                          # ~ q~.r~ - c_i, (b, m)
        del q_bf16
        q_norm = self._queries_bf16_norm[start:stop, None]
        accumulation = (_ACCUMULATION_LAMBDA * (self.n_features + 1) ** 0.5 * _FLOAT32_UNIT
                        * (q_norm * refs_bf16_norm.max() + c.float().abs()[:, None]))
        # s_ij >= L_i  implies  out_ij + error_ij >= L_i - c_i
        need = (bar - c.float())[:, None] - self._queries_bf16_error[start:stop, None] - accumulation
        out.add_(out.abs().mul_(_BF16_OUTPUT_ERROR)).add_(q_norm * refs_bf16_error)
        if penalty is not None:  # s_ij - p_j >= L_i: the bar moves by p_j, the error bound does not
            need = need + penalty
        rows, cols = (out >= need).nonzero(as_tuple=True)  # row-major: each query's pairs together
        del out
        sims = _rescore(self._queries[start:stop], refs, rows, cols)
        if penalty is not None:
            sims -= penalty[cols]
        self.n_rescored += int(rows.shape[0])
        counts = torch.bincount(rows, minlength=b)
        width = max(int(counts.max()) if b else 0, 1)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(rows.shape[0], device=self.device) - first[rows]
        keys = torch.full((b, width), _NO_KEY, dtype=torch.int64, device=self.device)
        cand_labels = torch.zeros_like(keys)
        keys[rows, slot] = _encode(sims, global_idx[cols])
        cand_labels[rows, slot] = labels[cols]
        if width > self.k:
            keys, pos = torch.topk(keys, self.k, dim=1, largest=True, sorted=False)
            cand_labels = torch.gather(cand_labels, 1, pos)
        return keys, cand_labels

    def _rescored_keys(self, start: int, stop: int, refs: torch.Tensor,
                       keys: torch.Tensor, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """``keys`` (of this chunk's references) with their similarities rescored like the screen's.

        Every similarity the bf16 path keeps then comes from one arithmetic, so duplicated
        references tie exactly and the lower index wins, as in float32.
        """
        _, idx = _decode(keys)
        rows = torch.arange(stop - start, device=self.device).repeat_interleave(keys.shape[1])
        cols = idx.reshape(-1) - self.n_references
        sims = _rescore(self._queries[start:stop], refs, rows, cols)
        if penalty is not None:
            sims -= penalty[cols]
        return _encode(sims.reshape(keys.shape), idx)

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
        if self.n_queries * int(n_classes) * 4 > _MAX_SCORE_BYTES:
            raise ValueError(
                f"predict_scores would allocate {self.n_queries} x {int(n_classes)} float32 votes "
                f"({self.n_queries * int(n_classes) * 4 / 2**30:.1f} GiB: one column per class index up to "
                f"the largest label); use predict() or accuracy(), which vote over the labels present "
                f"(classes_), or relabel the classes 0..C-1")
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
        return scores.scatter_add_(1, torch.searchsorted(classes, labels.contiguous()), weights)

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


class ReferenceDensity:
    """Mean cosine similarity of each reference to its ``k`` most similar probes.

    The reference side ``r_T`` of CSLS (cross-domain similarity local scaling,
    Conneau et al., ICLR 2018): references in dense regions ("hubs") are near
    many queries and win votes they do not deserve; ranking by
    ``s_ij - beta * r_j`` (:meth:`StreamingKNN.update`'s ``penalty``) evens
    that out.  The probes are unlabelled embeddings drawn like the queries,
    e.g. held-out training images: no label is read.  They are normalised and
    held once; each call scores one chunk of references, so the densities of a
    streamed reference set are computed beside the :class:`StreamingKNN`.

    Parameters
    ----------
    probes : array-like or torch.Tensor, shape (n_probes, n_features)
        Need not be normalised.
    k : int, default 10
        Probes averaged per reference (at most ``n_probes``).
    precision : {"float32", "bf16"}, default "float32"
        Of the held probes and the similarity GEMM (bf16: about 0.4 % error on
        each similarity of the mean, half the memory).
    device : str or torch.device, default "auto"

    Examples
    --------
    >>> import numpy as np
    >>> density = ReferenceDensity(np.array([[1.0, 0.0], [0.8, 0.6]]), k=1, device="cpu")
    >>> density(np.array([[1.0, 0.0], [0.0, 2.0]])).tolist()
    [1.0, 0.6000000238418579]
    >>> density(np.array([[1.0, 0.0]]), exclude=np.array([[True], [False]])).tolist()
    [0.800000011920929]
    """

    def __init__(self, probes: Any, *, k: int = 10, precision: str = "float32",
                 device: str | torch.device | None = "auto") -> None:
        self.k = int(check_param("k", k, _PARAMS["k"], "ReferenceDensity"))
        self.precision = check_param("precision", precision, _PARAMS["precision"], "ReferenceDensity")
        self.device = resolve_device(check_param("device", device, DEVICE, "ReferenceDensity"))
        warn_emulated_bf16(self.precision, self.device, "ReferenceDensity")
        p = _to_float_tensor(probes, "probes", self.device)
        if p.shape[0] == 0:
            raise ValueError("probes is empty")
        p = _unit_rows(p)
        self._probes = p.bfloat16() if precision == "bf16" else p
        self.n_probes, self.n_features = map(int, p.shape)

    def __call__(self, references: Any, exclude: Any = None) -> torch.Tensor:
        """Densities of one chunk of references.

        Parameters
        ----------
        references : array-like or torch.Tensor, shape (m, n_features)
            Need not be normalised.
        exclude : array-like or torch.Tensor of bool, shape (n_probes, m), optional
            Pairs left out, e.g. a probe and its own image or mirror among the references
            (a reference left with fewer than ``k`` probes: the mean of those left).

        Returns
        -------
        torch.Tensor of float32, shape (m,), on ``device``
        """
        r = _to_float_tensor(references, "references", self.device)
        if r.shape[1] != self.n_features:
            raise ValueError(f"references have {r.shape[1]} features but the probes have {self.n_features}")
        r = _unit_rows(r)
        sims = (self._probes @ r.to(self._probes.dtype).T).float()
        if exclude is not None:
            mask = _as_tensor(exclude, "exclude").to(self.device)
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(sims.shape):
                raise ValueError(f"exclude must be a boolean array of shape {tuple(sims.shape)} "
                                 f"(probes, references), got {mask.dtype} {tuple(mask.shape)}")
            sims.masked_fill_(mask, -float("inf"))
        top = torch.topk(sims, min(self.k, self.n_probes), dim=0).values
        kept = torch.isfinite(top)
        n_kept = kept.sum(0)
        if not bool((n_kept > 0).all()):
            raise ValueError("a reference has no probe left after exclude")
        return torch.where(kept, top, 0.0).sum(0) / n_kept


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
    precision: str = "float32",
    penalty: Any = None,
) -> dict[str, float]:
    """Weighted-kNN top-k accuracy of ``test`` against the reference set ``train``.

    Parameters
    ----------
    train : numpy.ndarray or torch.Tensor, shape (n_train, n_features), or iterable
        Reference embeddings.  An array (a ``numpy.memmap`` works) is streamed
        ``batch_size`` rows at a time.  Anything else must be an iterable of
        ``(embeddings_chunk, labels_chunk)`` pairs with shapes
        ``(m_i, n_features)`` and ``(m_i,)``, e.g. a generator that computes
        train embeddings chunk by chunk; then ``train_labels`` must be None,
        and an item may carry a third entry, that chunk's ``penalty``.
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
    precision : {"float32", "bf16"}, default "float32"
        See :class:`StreamingKNN`; both give the float32 neighbours.
    penalty : array-like of float, shape (n_train,), optional
        Rank and vote by ``s_ij - penalty_j`` (:meth:`StreamingKNN.update`),
        e.g. ``beta * ReferenceDensity(probes)(train)`` for the hubness-reduced
        kNN; only with an array ``train``.  Default: the paper's kNN.

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
                       query_batch_size=query_batch_size, precision=precision)
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
        if penalty is not None:
            penalty = _as_tensor(penalty, "penalty")
            if tuple(penalty.shape) != (n_train,):
                raise ValueError(f"penalty must have shape ({n_train},), one value per train row, "
                                 f"got {tuple(penalty.shape)}")
        for start in range(0, n_train, batch_size):
            knn.update(train[start:start + batch_size], train_labels[start:start + batch_size],
                       None if penalty is None else penalty[start:start + batch_size])
    else:
        if train_labels is not None:
            raise ValueError(
                "train_labels must be None when train is an iterable of (embeddings, labels) chunks"
            )
        if penalty is not None:
            raise ValueError("penalty is for an array train; an iterable gives each chunk's as a third entry")
        if not isinstance(train, Iterable):
            raise TypeError("train must be an array or an iterable of (embeddings, labels) pairs")
        for item in train:
            try:
                chunk, chunk_labels, *rest = item
                if len(rest) > 1:
                    raise ValueError
            except (TypeError, ValueError):
                raise TypeError(
                    "each item of train must be an (embeddings_chunk, labels_chunk) pair "
                    "or an (embeddings_chunk, labels_chunk, penalty_chunk) triple"
                ) from None
            knn.update(chunk, chunk_labels, *rest)
    return knn.accuracy(test_labels, topk=topk)
