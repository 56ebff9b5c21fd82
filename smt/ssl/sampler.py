"""Mini-batch class sampling and long-tailed subsets (Assran et al., ICLR 2023).

"The hidden uniform cluster prior in self-supervised learning" controls the
class content of each mini-batch: a batch holds images of exactly ``K``
classes.  Small ``K`` gives class-*imbalanced* batches (a few classes fill
the batch); ``K`` = all classes gives class-*balanced* ones.  Methods whose
loss spreads a batch over the representation space (volume maximisation:
SimCLR, VICReg, MSN's mean-entropy term) then see batches that do not match
their implicit uniform prior.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ClassBatchSampler", "long_tailed_indices", "power_law_counts"]


class ClassBatchSampler:
    """Batch sampler whose every mini-batch contains exactly ``classes_per_batch`` classes.

    Each epoch, the indices of every class are shuffled into a pool.  For
    each batch, ``K = classes_per_batch`` distinct classes are drawn without
    replacement with probability proportional to the samples they have left
    (so big classes are not left over at the end), and the batch is split
    between them in proportion to what they have left (with equal classes:
    evenly), at least one sample each.

    Coverage: every index appears in an epoch.  Only near the end of an
    epoch, when fewer than ``K`` classes have samples left, is a batch
    completed with one re-drawn sample of each missing class, so that it
    still holds exactly ``K`` classes; these repeats are the only ones.

    Small tails: with ``K = 1`` the last batch of a class holds what is left
    of it, which may be a single image (``BatchNorm1d`` then raises in
    training; 2-3 images make VICReg's variance and covariance degenerate).
    A batch smaller than ``min_batch_size`` is merged into the last earlier
    batch with the same classes (which then exceeds ``batch_size`` by less
    than ``min_batch_size``), or dropped for this epoch when there is none.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
    batch_size : int
        Samples per batch (the last batch of an epoch may be smaller).
    classes_per_batch : int
        ``K``; at most the number of classes and at most ``batch_size``.
    seed : int, default 0
        The order of epoch ``e`` depends only on ``(seed, e)``: resuming at
        an epoch replays it exactly.
    min_batch_size : int, optional
        Default ``min(32, max(2, batch_size // 2))``.

    Examples
    --------
    >>> s = ClassBatchSampler([0, 0, 1, 1, 2, 2], batch_size=2, classes_per_batch=2)
    >>> all(len(set(np.array([0, 0, 1, 1, 2, 2])[b])) == 2 for b in s.batches(0))
    True
    """

    def __init__(self, labels, batch_size: int, classes_per_batch: int, seed: int = 0,
                 min_batch_size: int | None = None) -> None:
        self.labels = np.asarray(labels).astype(np.int64)
        self.classes = np.unique(self.labels)
        if not 1 <= classes_per_batch <= min(len(self.classes), batch_size):
            raise ValueError(f"classes_per_batch must be in [1, min(n_classes={len(self.classes)}, "
                             f"batch_size={batch_size})], got {classes_per_batch}")
        self.batch_size, self.k, self.seed = int(batch_size), int(classes_per_batch), int(seed)
        self.by_class = [np.flatnonzero(self.labels == c) for c in self.classes]
        self.min_batch_size = (min(32, max(2, self.batch_size // 2)) if min_batch_size is None
                               else int(min_batch_size))

    def __len__(self) -> int:  # approximate: the end of an epoch may need a few more batches
        return -(-len(self.labels) // self.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of ``epoch``: a list of index arrays."""
        rng = np.random.default_rng([self.seed, epoch])
        pools = [list(rng.permutation(ix)) for ix in self.by_class]
        left = np.array([len(p) for p in pools])
        out = []
        while left.sum() > 0:
            nonempty = np.flatnonzero(left > 0)
            if len(nonempty) >= self.k:
                # Gumbel top-k: K distinct classes, with probability proportional to what is left
                keys = np.log(left[nonempty]) + rng.gumbel(size=len(nonempty))
                chosen = nonempty[np.argsort(-keys)[: self.k]]
                extra = np.array([], dtype=np.int64)
            else:  # end of epoch: pad with one re-drawn sample of other classes
                chosen = nonempty
                empty = rng.choice(np.flatnonzero(left == 0), self.k - len(nonempty), replace=False)
                extra = np.array([rng.choice(self.by_class[c]) for c in empty], dtype=np.int64)
            take = _split(self.batch_size - len(extra), left[chosen])
            batch = []
            for c, t in zip(chosen, take):
                batch += pools[c][:t]
                del pools[c][:t]
                left[c] -= t
            out.append(np.concatenate([np.array(batch, dtype=np.int64), extra]))
        return self._merge_small(out)

    def _merge_small(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Merge each batch below ``min_batch_size`` into the last earlier one with its classes, else drop it."""
        out: list[np.ndarray] = []
        for b in batches:
            if len(b) >= self.min_batch_size:
                out.append(b)
                continue
            classes = set(self.labels[b].tolist())
            for j in range(len(out) - 1, -1, -1):
                if set(self.labels[out[j]].tolist()) == classes:
                    out[j] = np.concatenate([out[j], b])
                    break
        return out

    def __iter__(self):
        raise TypeError("iterate over sampler.batches(epoch): the epoch seeds the order")


def _split(total: int, capacity: np.ndarray) -> np.ndarray:
    """Split ``total`` among bins in proportion to their capacities, at least 1 and at most the capacity each.

    Proportional shares make the chosen classes drain together, so that an
    epoch rarely ends with fewer than ``K`` classes left.
    """
    cap = capacity.astype(np.int64)
    if total >= cap.sum():
        return cap.copy()
    spare = total - len(cap)                      # after the one sample each class must give
    ideal = spare * (cap - 1) / max((cap - 1).sum(), 1)
    take = 1 + np.floor(ideal).astype(np.int64)
    rest = total - take.sum()
    order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")  # largest remainders first
    for i in order:
        if rest == 0:
            break
        if take[i] < cap[i]:
            take[i] += 1
            rest -= 1
    return take


def power_law_counts(n_max: int, n_classes: int, exponent: float) -> np.ndarray:
    """Class sizes ``n_c = floor(n_max * (c + 1) ** -exponent)``, at least 1.

    Returns
    -------
    numpy.ndarray of int64, shape (n_classes,)
    """
    c = np.arange(1, n_classes + 1, dtype=np.float64)
    return np.maximum(np.floor(n_max * c ** -float(exponent)), 1).astype(np.int64)


def long_tailed_indices(labels, n_max: int, exponent: float = 1.0, seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: class ``c`` keeps ``power_law_counts(...)[c]`` samples.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
        Classes ``0 .. C-1``; class 0 is the head, class ``C-1`` the tail.
    n_max : int
        Size of the head class.
    exponent : float, default 1.0
        Power-law exponent of the class sizes.
    seed : int, default 0

    Returns
    -------
    numpy.ndarray of int64, sorted.
    """
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1
    counts = power_law_counts(n_max, n_classes, exponent)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(n_classes):
        ix = np.flatnonzero(labels == c)
        if len(ix) < counts[c]:
            raise ValueError(f"class {c} has {len(ix)} samples, fewer than the {counts[c]} asked")
        keep.append(rng.choice(ix, counts[c], replace=False))
    return np.sort(np.concatenate(keep))
