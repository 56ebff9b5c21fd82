"""ZCA whitening of centred patches, fitted from streamed second moments."""
import numpy as np
import torch

from smt._norm import l2_normalize


class Whitening:
    """ZCA whitening ``W = U (Lambda + eps)^(-1/2) U^T`` of the uncentred patch second moment.

    Patches are already centred one by one, so the global mean is ~0 and no further mean is
    subtracted (docs/algorithm.md §2.4). PCA and ZCA whitening differ by a rotation, which changes no cosine
    downstream; ZCA keeps whitened patches and atoms viewable as images.

    Parameters
    ----------
    eps : float, default=1e-3
        Added to the eigenvalues of the covariance, on the [0, 1] pixel scale.

    Attributes
    ----------
    covariance_ : ndarray of shape (D, D), float64
    whitening_ : ndarray of shape (D, D)
        ``W``; whitened patch = ``W @ x``.
    coloring_ : ndarray of shape (D, D)
        ``W^-1 = U (Lambda + eps)^(1/2) U^T``, to show whitened vectors as pixels.
    n_samples_seen_ : int
    """

    def __init__(self, eps=1e-3):
        self.eps = eps

    def partial_fit(self, patches):
        """Add patches to the float64 second-moment sums.

        Parameters
        ----------
        patches : torch.Tensor of shape (n, D) or (n_images, ..., D)
            With more than two dimensions, each image's moment is summed on its own and added in
            image order, so the sums do not depend on how the images are batched.
        """
        d = patches.shape[-1]
        x = patches.reshape(patches.shape[0] if patches.dim() > 2 else 1, -1, d).to(torch.float64)
        if not hasattr(self, "_scatter"):
            self._scatter = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.n_samples_seen_ = 0
        for moment in torch.bmm(x.transpose(1, 2), x):
            self._scatter += moment
        self.n_samples_seen_ += x.shape[0] * x.shape[1]
        return self

    def finalize(self):
        """Turn the accumulated sums into ``covariance_``, ``whitening_`` and ``coloring_``."""
        cov = (self._scatter / self.n_samples_seen_).cpu().numpy()
        cov = (cov + cov.T) / 2
        evals, evecs = np.linalg.eigh(cov)
        evals = np.clip(evals, 0.0, None) + self.eps
        self.covariance_ = cov
        self.whitening_ = (evecs / np.sqrt(evals)) @ evecs.T
        self.coloring_ = (evecs * np.sqrt(evals)) @ evecs.T
        return self

    def transform(self, patches):
        """Whiten and L2-normalise.

        Parameters
        ----------
        patches : torch.Tensor of shape (..., D)

        Returns
        -------
        torch.Tensor of shape (..., D)
            Unit vectors; a constant (all-zero) patch stays zero.
        """
        w = torch.as_tensor(self.whitening_, dtype=patches.dtype, device=patches.device)
        z = patches @ w  # W is symmetric
        return l2_normalize(z)

    @property
    def has_state(self):
        """Whether any patch moments have been added (or set) yet."""
        return "_scatter" in vars(self)

    def get_state(self):
        return {"scatter": self._scatter.cpu().numpy(), "n_samples_seen": np.int64(self.n_samples_seen_)}

    def set_state(self, state, device="cpu"):
        self._scatter = torch.as_tensor(state["scatter"], device=device)
        self.n_samples_seen_ = int(state["n_samples_seen"])
        return self
