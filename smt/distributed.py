"""Distributed fit on PyTorch's own engine: ``torch.distributed``, launched by ``torchrun``.

When a process group is initialized with more than one process, :meth:`smt.SMT.fit` (and
``partial_fit``) on each process takes that process's *shard* of the training images and

1. all-gathers the bounded front-end set (the first ``front_end_images`` images of the global
   order), so every process fits the same whitening and dictionary on the same images; rank 0's
   result is then broadcast, so all processes code with bit-identical arrays even on mixed hardware;
2. streams its own shard through the code statistics (sums over images);
3. all-reduces the statistics (float64 sums) before the eigen-solve.

N processes therefore give the same model as one process fitting the concatenated shards.

Sharding rule: **contiguous blocks in rank order**. The global order of the training set is rank
0's images, then rank 1's, and so on; shards may differ in size (at least one image each), e.g.
``np.array_split(X, world_size)[rank]``, or each process reading its own block of a file. For
``partial_fit`` the global order of one call is the concatenation of that call's chunks in rank
order. Every process must call ``fit`` / ``partial_fit`` the same number of times, with images of
the same shape and pixel type (uint8, or float); a shard that fails the input checks on one
process raises the same error, naming that rank, on every process.

Everything here is a no-op (one process, rank 0) when ``torch.distributed`` is not initialized.

The fit meets the other processes only through one :class:`Shard`, opened where the fit starts:
the fit itself is written for one process and asks its shard for the three global things it needs
(the front-end images, rank 0's front-end arrays, the summed statistics).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def is_active():
    """True when a process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_active() else 0


def world_size():
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_active() else 1


def _comm_device():
    # NCCL moves CUDA tensors only; gloo (and MPI) move CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_counts(n):
    """Every process's local count ``n``, as a list indexed by rank."""
    if not is_active():
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.int64, device=_comm_device())
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def check_on_all(check):
    """Run the input check ``check()`` on every process; if it fails on any, fail on all.

    A shard that one process rejects (no images, NaN, another image size or pixel type than the
    other shards) would otherwise leave the other processes waiting forever in the next
    collective. Instead every process raises the same ``ValueError``, which names the rank.

    Parameters
    ----------
    check : callable
        Returns this process's validated images (n, H, W, C), or raises ValueError / TypeError.

    Returns
    -------
    What ``check()`` returned.
    """
    if not is_active():
        return check()
    images, error = None, None
    try:
        images = check()
    except (ValueError, TypeError) as exc:
        error = str(exc)
    # The front-end set travels as uint8 or float32 rows (see image._as_buffer), so that is the
    # pixel type every shard must share.
    kind = None if images is None else ("uint8" if str(images.dtype).endswith("uint8") else "float")
    sig = None if images is None else (tuple(int(v) for v in images.shape[1:]), kind)
    reports = [None] * world_size()
    dist.all_gather_object(reports, (error, sig))
    for r, (err, _) in enumerate(reports):
        if err is not None:
            raise ValueError(f"rank {r} of {world_size()}: {err}")
    ref = reports[0][1]
    for r, (_, s) in enumerate(reports):
        if s != ref:
            raise ValueError(f"every process must pass images of the same size and pixel type: rank 0 has "
                             f"{ref[1]} images of (H, W, C) = {ref[0]}, rank {r} has {s[1]} images of {s[0]}")
    return images


def broadcast_int(value, src=0):
    """Rank ``src``'s integer (e.g. the seed drawn from ``random_state=None``)."""
    if not is_active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, src)
    return int(t)


def gather_rows(local, counts):
    """Concatenate every process's rows in rank order, on every process.

    One broadcast per contributing rank, of exactly its rows (no padding), so the memory is
    that of the result.

    Parameters
    ----------
    local : torch.Tensor of shape (counts[rank], ...), on the CPU
        Same trailing shape and dtype on every process.
    counts : list of int
        Row count of every rank (all processes pass the same list).

    Returns
    -------
    torch.Tensor of shape (sum(counts), ...), on the CPU
    """
    if not is_active():
        return local
    me, device = rank(), _comm_device()
    dtype = local.dtype
    wire = torch.uint8 if dtype == torch.bool else dtype
    parts = []
    for src, count in enumerate(counts):
        if count == 0:
            continue
        if src == me:
            buf = local.to(wire).to(device).contiguous()
        else:
            buf = torch.empty((count,) + tuple(local.shape[1:]), dtype=wire, device=device)
        dist.broadcast(buf, src)
        parts.append(buf.cpu())
    if not parts:
        return local[:0]
    return torch.cat(parts).to(dtype)


def broadcast_arrays(arrays, src=0):
    """Rank ``src``'s numpy arrays (same names, shapes and dtypes on every process)."""
    if not is_active():
        return arrays
    out = {}
    for name, value in arrays.items():
        t = torch.tensor(np.asarray(value), device=_comm_device())  # a copy: the caller's arrays stay as they are
        dist.broadcast(t, src)
        out[name] = t.cpu().numpy().reshape(np.shape(value))
    return out


def all_reduce_state(state):
    """Sum a dict of numpy arrays / integers over all processes (float64 sums stay exact for counts)."""
    if not is_active():
        return state
    out = {}
    for name, value in state.items():
        arr = np.asarray(value)
        t = torch.tensor(arr, device=_comm_device())  # a copy: the caller's arrays stay as they are
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[name] = t.cpu().numpy().astype(arr.dtype, copy=False).reshape(arr.shape)
    return out


def reduced_statistics(stats):
    """The context statistics summed over all processes, as a new object (``stats`` is unchanged).

    Each process keeps the sums of its own shard, so later ``partial_fit`` calls keep adding to
    local sums and every solve reduces afresh.
    """
    if not is_active():
        return stats
    # A process that has seen no non-empty patch yet contributes zeros.
    k = stats.n_atoms
    state = stats.get_state() if stats.has_state else {
        "gram": np.zeros((k, k)), "context": np.zeros((k, k)), "usage": np.zeros(k),
        "n_patches": np.int64(0), "n_images": np.int64(0)}
    return stats.empty_like().set_state(all_reduce_state(state))


@dataclass(frozen=True)
class Shard:
    """This process's contiguous block of the global image stream of one fit call.

    Opened once per call with :meth:`open`; with one process it is the whole stream and every
    method returns its input.

    Attributes
    ----------
    counts : tuple of int
        Every process's image count in this call, by rank; the global stream is rank 0's images,
        then rank 1's, and so on.
    rank : int
    """

    counts: tuple
    rank: int = 0

    @classmethod
    def open(cls, check):
        """Validate this process's images on every process (see :func:`check_on_all`) and learn
        the shard sizes; returns ``(shard, images)``."""
        images = check_on_all(check)
        return cls(tuple(all_gather_counts(len(images))), rank()), images

    @property
    def total(self):
        """Images in the global stream of this call."""
        return sum(self.counts)

    @property
    def is_root(self):
        """True on the one process that keeps what all processes would otherwise repeat."""
        return self.rank == 0

    def seed(self, value):
        """Rank 0's seed."""
        return broadcast_int(value)

    def first(self, images, n, wire):
        """The first ``n`` images of this call's global stream, on every process.

        Parameters
        ----------
        images : array-like of shape (counts[rank], ...)
            This process's images.
        n : int
            At most ``total``.
        wire : callable
            Turns this process's rows into the CPU tensor that travels (same dtype on every process).

        Returns
        -------
        With one process ``images[:n]`` itself (a view, nothing copied); else the gathered rows,
        a CPU tensor.
        """
        take = [max(0, min(c, n - sum(self.counts[:q]))) for q, c in enumerate(self.counts)]
        mine = images[:take[self.rank]]
        if len(self.counts) == 1:
            return mine
        return gather_rows(wire(mine), take)

    def from_root(self, arrays):
        """Rank 0's numpy arrays, so that every process codes with bit-identical ones."""
        return broadcast_arrays(arrays)

    def summed(self, stats):
        """The code statistics summed over the processes (see :func:`reduced_statistics`)."""
        return reduced_statistics(stats)

    def checkpoint_path(self, path):
        """One checkpoint file per process (its shard, its position) when there are several."""
        if not path or len(self.counts) == 1:
            return path
        p = Path(path)
        return str(p.with_name(f"{p.name}.rank{self.rank}-of-{len(self.counts)}"))
