"""The binary codes of a fit, kept compactly so that ``fit_transform`` encodes every patch once.

A binary code is its list of active atoms: the store keeps each patch's count and the atoms
(uint16 for K <= 65536, else int32), batch by batch. It holds them in memory up to a budget and
spills the rest to an anonymous temporary file (deleted when the store is closed, or by the OS if
the process dies), so its memory stays bounded whatever the data.
"""
import tempfile

import numpy as np
import torch

# Codes held in memory before the store spills to a file (a few thousand CIFAR-10 images at K 8192;
# beyond that reading the file back costs little next to the embedding).
MEMORY_BUDGET = 1 << 28


class CodeStore:
    """Append-only store of padded binary codes, read back batch by batch as flat lists.

    Parameters
    ----------
    n_atoms : int
    memory_budget : int or None, default=None
        Bytes of codes kept in memory (None: ``MEMORY_BUDGET``, 256 MiB); the rest go to a temporary file.
    dir : str or None
        Where the temporary file is made (default: the system's temporary directory).

    Attributes
    ----------
    n_images_ : int
        Images appended (the first axis of every batch).
    nbytes_ : int
        Bytes of codes held, in memory and in the file.
    """

    def __init__(self, n_atoms, memory_budget=None, dir=None):
        self.n_atoms = n_atoms
        self.memory_budget = MEMORY_BUDGET if memory_budget is None else memory_budget
        self.dir = dir
        self._atom_dtype = np.uint16 if n_atoms <= 1 << 16 else np.int32
        self._count_dtype = np.uint16 if n_atoms < 1 << 16 else np.int32
        self._batches = []  # (counts shape, n_entries, in-memory arrays or file offset)
        self._in_memory = 0
        self._file = None
        self.n_images_ = 0
        self.nbytes_ = 0

    def append(self, indices):
        """Add a batch of codes.

        Parameters
        ----------
        indices : torch.Tensor of shape (n, ...,  m), int
            Active atoms, -1 pads.
        """
        valid = indices >= 0
        self.append_lists(indices[valid].cpu().numpy(), valid.sum(-1).cpu().numpy())

    def append_lists(self, atoms, counts):
        """Add a batch of codes given as flat lists.

        Parameters
        ----------
        atoms : ndarray of shape (sum(counts),), int
            Each patch's active atoms, patch after patch.
        counts : ndarray of shape (n, ...), int
            Active atoms per patch; its shape is the batch's (images first).
        """
        counts = np.asarray(counts).astype(self._count_dtype)
        atoms = np.asarray(atoms).astype(self._atom_dtype)
        size = counts.nbytes + atoms.nbytes
        self.nbytes_ += size
        self.n_images_ += len(counts)
        if self._file is None and self._in_memory + size <= self.memory_budget:
            self._in_memory += size
            self._batches.append((counts.shape, len(atoms), (counts, atoms)))
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.dir, prefix="smt-codes-")
        offset = self._file.seek(0, 2)
        counts.tofile(self._file)
        atoms.tofile(self._file)
        self._batches.append((counts.shape, len(atoms), offset))

    def __len__(self):
        return len(self._batches)

    def __iter__(self):
        """Yield ``(atoms, counts)`` per batch: int32 tensors, ``counts`` of the appended shape
        without its last axis (``atoms`` lists each patch's active atoms in turn)."""
        for shape, n_atoms, where in self._batches:
            if isinstance(where, tuple):
                counts, atoms = where
            else:
                self._file.seek(where)
                counts = np.fromfile(self._file, self._count_dtype, int(np.prod(shape))).reshape(shape)
                atoms = np.fromfile(self._file, self._atom_dtype, n_atoms)
            yield (torch.from_numpy(atoms.astype(np.int32)), torch.from_numpy(counts.astype(np.int32)))

    def close(self):
        """Drop the codes and delete the temporary file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._batches = []
        self._in_memory = 0
        self.n_images_ = self.nbytes_ = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
