"""The dictionary: online 1-sparse dictionary learning, i.e. online spherical k-means (Algorithm 1).

The update follows the author lineage's ``quadraticBasisUpdate``: the reconstruction gradient of
each atom is divided by that atom's recent activation energy, which turns it into a step toward
the running mean of the patches the atom wins (the k-means centroid update); renormalising keeps
the atoms on the unit sphere, matching the cosine encoder.
"""
import numpy as np
import torch

from smt._norm import l2_normalize


class OnlineDictionary:
    """Algorithm 1: online 1-sparse dictionary learning heuristic (k-means clustering).

    Parameters
    ----------
    n_atoms : int
        K.
    batch_size : int, default=4096
        Patches per update step (B).
    lr : float, default=0.1
        Step size (eta).
    memory : int, default=300
        Length L of the running activation-energy average.
    floor : float, default=1e-3
        Added to the activation energy before dividing (epsilon_h).
    dead_every : int, default=100
        Every this many steps, atoms with energy below ``dead_threshold / K`` are re-seeded with
        the patches of the current batch that are worst reconstructed.
    dead_threshold : float, default=0.01

    Attributes
    ----------
    dictionary_ : torch.Tensor of shape (K, D)
        Unit-norm atoms (rows).
    activation_ : torch.Tensor of shape (K,)
        Running activation energy h.
    n_steps_ : int
    """

    def __init__(self, n_atoms, batch_size=4096, lr=0.1, memory=300, floor=1e-3, dead_every=100,
                 dead_threshold=0.01):
        self.n_atoms = n_atoms
        self.batch_size = batch_size
        self.lr = lr
        self.memory = memory
        self.floor = floor
        self.dead_every = dead_every
        self.dead_threshold = dead_threshold

    def initialize(self, patches, seed, jitter=True):
        """Start from K whitened unit patches, jittered by 1e-3 U[0, 1) to break exact ties.

        Parameters
        ----------
        patches : torch.Tensor of shape (K, D)
            Distinct training patches (the caller draws them).
        seed : int
        jitter : bool, default=True
            False for patches that cannot tie (:func:`incoherent_atoms`): their coherence bound
            then holds exactly.
        """
        atoms = patches.to(torch.float32)
        if jitter:
            gen = np.random.default_rng(seed)
            atoms = atoms + 1e-3 * torch.as_tensor(gen.random(patches.shape, dtype=np.float32), device=patches.device)
        self.dictionary_ = atoms / atoms.norm(dim=1, keepdim=True)
        self.activation_ = torch.full((self.n_atoms,), 1.0 / self.n_atoms, device=patches.device)
        self.n_steps_ = 0
        self._buffer = patches.new_zeros((0, patches.shape[1]), dtype=torch.float32)
        return self

    def partial_fit(self, x):
        """Run update steps on a stream of patches; a remainder smaller than a batch waits.

        Parameters
        ----------
        x : torch.Tensor of shape (n, D)
            Whitened unit patches (non-empty), already shuffled.
        """
        buf = torch.cat([self._buffer, x.to(torch.float32)])
        n_full = len(buf) // self.batch_size * self.batch_size
        for i in range(0, n_full, self.batch_size):
            self._step(buf[i:i + self.batch_size])
        self._buffer = buf[n_full:].clone()
        return self

    def flush(self):
        """Use the waiting remainder as a last, smaller batch."""
        if len(self._buffer):
            self._step(self._buffer)
            self._buffer = self._buffer[:0]
        return self

    def _step(self, x):
        phi = self.dictionary_
        s = x @ phi.T  # (B, K) cosines
        best = s.argmax(dim=1)
        coef = s.gather(1, best[:, None])[:, 0]  # least-squares coefficient for a unit atom
        residual = x - coef[:, None] * phi[best]
        energy = _atom_sums(best, coef * coef, self.n_atoms) / len(x)
        self.activation_ = (1 - 1 / self.memory) * self.activation_ + energy / self.memory
        grad = _atom_sums(best, coef[:, None] * residual, self.n_atoms) / len(x)
        phi = phi + self.lr * grad / (self.activation_ + self.floor)[:, None]
        phi = phi / phi.norm(dim=1, keepdim=True)
        self.n_steps_ += 1
        if self.dead_every and self.n_steps_ % self.dead_every == 0:
            dead = torch.nonzero(self.activation_ < self.dead_threshold / self.n_atoms)[:, 0]
            if len(dead):
                worst = residual.norm(dim=1).argsort(descending=True, stable=True)[:len(dead)]
                dead = dead[:len(worst)]
                phi[dead] = l2_normalize(x[worst])
                self.activation_[dead] = 1.0 / self.n_atoms
        self.dictionary_ = phi

    @property
    def has_state(self):
        """Whether the atoms have been initialised (or set) yet."""
        return "dictionary_" in vars(self)

    def get_state(self):
        return {"dictionary": self.dictionary_.cpu().numpy(), "activation": self.activation_.cpu().numpy(),
                "n_steps": np.int64(self.n_steps_), "buffer": self._buffer.cpu().numpy()}

    def set_state(self, state, device="cpu"):
        self.dictionary_ = torch.as_tensor(state["dictionary"], device=device)
        self.activation_ = torch.as_tensor(state["activation"], device=device)
        self.n_steps_ = int(state["n_steps"])
        self._buffer = torch.as_tensor(state["buffer"], device=device)
        return self


def _atom_sums(best, rows, n_atoms):
    """Sum of ``rows`` per winning atom, shape (K,) or (K, D)."""
    if best.device.type == "cuda":
        # A one-hot GEMM: CUDA's index_add_ uses float atomics, whose order (and so rounding) varies.
        onehot = torch.zeros(len(best), n_atoms, device=best.device, dtype=rows.dtype)
        onehot[torch.arange(len(best), device=best.device), best] = 1
        return onehot.T @ rows
    out = rows.new_zeros((n_atoms,) + rows.shape[1:])
    return out.index_add_(0, best, rows)


def incoherent_atoms(candidates, n_atoms, max_coherence, chunk_size=1024):
    """Atoms drawn from a stream of patches under a coherence bound: walk the candidates in order
    and keep one when its cosine to every atom kept before is at most ``max_coherence``.

    The diversity filter of the [A] implementation (docs/algorithm.md §3.1, its ``dict_thresh``): plain uniform
    sampling puts most atoms where patches are dense (smooth gradients, edges at few angles),
    which the threshold coder then switches on together; the filter spreads them over the
    sphere, like the greedy seeding of k-means++ but deterministic.

    Parameters
    ----------
    candidates : iterable of torch.Tensor of shape (n_i, D)
        Whitened unit patches, in the order to try them (the caller shuffles with its seed).
    n_atoms : int
        K.
    max_coherence : float
        Largest cosine allowed between two atoms.
    chunk_size : int, default=1024
        Candidates tested against the kept atoms in one product; the order of acceptance, and so
        the result, does not depend on it.

    Returns
    -------
    atoms : torch.Tensor of shape (K, D)
    n_tried : int
        Candidates walked until the K-th was kept.

    Raises
    ------
    ValueError
        When the stream ends with fewer than K atoms kept.

    Examples
    --------
    >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    >>> atoms, n_tried = incoherent_atoms([x], n_atoms=2, max_coherence=0.5)
    >>> atoms.tolist(), n_tried  # [0.8, 0.6] is too close to [1, 0]
    ([[1.0, 0.0], [0.0, 1.0]], 3)
    """
    atoms, n_kept, n_tried = None, 0, 0
    for x in candidates:
        for c in range(0, len(x), chunk_size):
            cand = x[c:c + chunk_size]
            if atoms is None:
                atoms = cand.new_empty((n_atoms, cand.shape[1]))
            if n_kept:
                cand_ok = (cand @ atoms[:n_kept].T).amax(dim=1) <= max_coherence
                survivors = torch.nonzero(cand_ok)[:, 0]
            else:
                survivors = torch.arange(len(cand), device=cand.device)
            # Greedy in order within the chunk: a survivor is kept unless an earlier kept one is too close.
            close = (cand[survivors] @ cand[survivors].T > max_coherence).cpu().numpy()
            blocked = np.zeros(len(survivors), dtype=bool)
            take = []
            for i in range(len(survivors)):
                if blocked[i]:
                    continue
                take.append(i)
                if n_kept + len(take) == n_atoms:
                    break
                blocked |= close[i]
            last = int(survivors[take[-1]]) if take else len(cand) - 1
            if take:
                atoms[n_kept:n_kept + len(take)] = cand[survivors[take]]
                n_kept += len(take)
            if n_kept == n_atoms:
                return atoms, n_tried + last + 1
            n_tried += len(cand)
    raise ValueError(f"found only {n_kept} of n_atoms={n_atoms} patches whose pairwise cosines are at most "
                     f"max_coherence={max_coherence} among {n_tried} candidates; raise max_coherence, lower "
                     f"n_atoms or fit the front end on more images (front_end_images)")


def patch_keys(seed, first_image, n_images, n_views, grid):
    """Uniform keys in [0, 1) of the patches of global images ``first_image, ...``, laid out as the
    batch the fit sees, (n_views * n_images, H', W') view-major: a hash (splitmix64) of the seed and
    of the global patch id (image, view, position), so no key depends on batching or sharding."""
    gh, gw = grid
    image = first_image + np.arange(n_images, dtype=np.uint64)
    view = np.arange(n_views, dtype=np.uint64)
    ids = (image[None, :] * np.uint64(n_views) + view[:, None]) * np.uint64(gh * gw)
    ids = ids.reshape(-1, 1) + np.arange(gh * gw, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = splitmix64(ids + splitmix64(np.array([seed], dtype=np.uint64)))
    return ((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(-1, gh, gw)


def splitmix64(x):
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
