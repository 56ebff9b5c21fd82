"""Spatial pooling of patch embeddings into an image embedding (paper: average, kernel 4, stride 2)."""
import torch
import torch.nn.functional as F

from smt._norm import l2_normalize


def pooled_grid_shape(grid_height, grid_width, pool_size, pool_stride):
    """Shape (H_p, W_p) of the pooled grid."""
    return ((grid_height - pool_size) // pool_stride + 1, (grid_width - pool_size) // pool_stride + 1)


def pool_window(pool_size, pool_sigma=None, dtype=torch.float32, device=None):
    """Weights of one pooling window, summing to 1.

    Parameters
    ----------
    pool_size : int
    pool_sigma : float or None
        None: the box (every position 1 / pool_size**2, the paper's average pooling). A float:
        ``exp(-r**2 / (2 * pool_sigma**2))`` at squared distance ``r**2`` (in patch positions) from
        the window's centre, normalised.

    Returns
    -------
    w : torch.Tensor of shape (pool_size, pool_size)
    """
    if pool_sigma is None:
        return torch.full((pool_size, pool_size), 1.0 / pool_size ** 2, dtype=dtype, device=device)
    r2 = (torch.arange(pool_size, dtype=torch.float64) - (pool_size - 1) / 2) ** 2
    # Measured from the centre positions, which weigh exactly 1 at any sigma: a sigma whose square
    # underflows gives the centre alone, never 0 / 0.
    excess = r2 - r2.min()
    g = torch.where(excess == 0, 1.0, torch.exp(-excess / (2.0 * float(pool_sigma) ** 2)))
    w = torch.outer(g, g)
    return (w / w.sum()).to(device=device, dtype=dtype)


def pool_embeddings(beta, pool_size=4, pool_stride=2, pool_sigma=None):
    """Pool unit patch embeddings over windows of the patch grid and L2-normalise each pooled location.

    Parameters
    ----------
    beta : torch.Tensor of shape (n, d, H', W')
        Patch embeddings, each unit norm or zero (empty patches count as zeros in the average).
    pool_size, pool_stride : int
    pool_sigma : float or None, default=None
        None: the average over the window (the paper's). A float: a Gaussian-weighted average of
        this width in patch positions (:func:`pool_window`).

    Returns
    -------
    z : torch.Tensor of shape (n, d * H_p * W_p)
        Flattened in (d, H_p, W_p) order; every pooled d-vector has unit norm (or is zero).

    Examples
    --------
    >>> pool_embeddings(torch.randn(2, 8, 23, 23)).shape
    torch.Size([2, 800])
    """
    if pool_sigma is None:
        pooled = F.avg_pool2d(beta, pool_size, pool_stride)
    else:
        d = beta.shape[1]
        w = pool_window(pool_size, pool_sigma, beta.dtype, beta.device)
        pooled = F.conv2d(beta, w.expand(d, 1, pool_size, pool_size), stride=pool_stride, groups=d)
    pooled = l2_normalize(pooled, dim=1)
    return pooled.flatten(1)
