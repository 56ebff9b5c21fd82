"""Spatial average pooling of patch embeddings into an image embedding (paper: kernel 4, stride 2)."""
import torch.nn.functional as F

from smt._norm import l2_normalize

def pooled_grid_shape(grid_height, grid_width, pool_size, pool_stride):
    """Shape (H_p, W_p) of the pooled grid."""
    return ((grid_height - pool_size) // pool_stride + 1, (grid_width - pool_size) // pool_stride + 1)


def pool_embeddings(beta, pool_size=4, pool_stride=2):
    """Average-pool unit patch embeddings and L2-normalise each pooled location.

    Parameters
    ----------
    beta : torch.Tensor of shape (n, d, H', W')
        Patch embeddings, each unit norm or zero (empty patches count as zeros in the average).
    pool_size, pool_stride : int

    Returns
    -------
    z : torch.Tensor of shape (n, d * H_p * W_p)
        Flattened in (d, H_p, W_p) order; every pooled d-vector has unit norm (or is zero).

    Examples
    --------
    >>> pool_embeddings(torch.randn(2, 8, 23, 23)).shape
    torch.Size([2, 800])
    """
    pooled = F.avg_pool2d(beta, pool_size, pool_stride)
    pooled = l2_normalize(pooled, dim=1)
    return pooled.flatten(1)
