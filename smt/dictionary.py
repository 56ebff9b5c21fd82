"""The dictionary: online 1-sparse dictionary learning, i.e. online spherical k-means (Algorithm 1).

The update follows the author lineage's ``quadraticBasisUpdate``: the reconstruction gradient of
each atom is divided by that atom's recent activation energy, which turns it into a step toward
the running mean of the patches the atom wins (the k-means centroid update); renormalising keeps
the atoms on the unit sphere, matching the cosine encoder.
"""
import numpy as np
import torch


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

    def initialize(self, patches, seed):
        """Start from K whitened unit patches, jittered by 1e-3 U[0, 1) to break exact ties.

        Parameters
        ----------
        patches : torch.Tensor of shape (K, D)
            Distinct training patches drawn uniformly (the caller draws them).
        seed : int
        """
        gen = np.random.default_rng(seed)
        jitter = torch.as_tensor(gen.random(patches.shape, dtype=np.float32), device=patches.device)
        atoms = patches.to(torch.float32) + 1e-3 * jitter
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
                phi[dead] = x[worst] / (x[worst].norm(dim=1, keepdim=True) + 1e-12)
                self.activation_[dead] = 1.0 / self.n_atoms
        self.dictionary_ = phi

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
