"""Patch extraction on the patch grid (paper: all p x p patches at stride 1, no padding)."""

# A patch whose centred pixels have a smaller norm is constant: it gets no code and is not a graph node.
EMPTY_PATCH_NORM = 1e-8


def patch_grid_shape(height, width, patch_size):
    """Shape (H', W') of the grid of stride-1 patches of an H x W image."""
    return height - patch_size + 1, width - patch_size + 1


def extract_patches(images, patch_size, center=True):
    """All ``patch_size`` x ``patch_size`` patches at stride 1, centred per channel.

    Parameters
    ----------
    images : torch.Tensor of shape (n, C, H, W), float
        Pixels in [0, 1].
    patch_size : int
    center : bool, default=True
        Subtract each patch's own mean, channel by channel. False keeps the level, for inputs
        whose level is the signal (a first SMT layer's embedding maps).

    Returns
    -------
    patches : torch.Tensor of shape (n, H', W', C * patch_size**2)
        Channel-major layout (c, i, j), as ``torch.nn.functional.unfold`` gives it. With
        ``center``, from each patch its own mean is subtracted separately for every channel, so
        only structure inside the patch (chromatic structure for colour) is left.
    empty : torch.Tensor of shape (n, H', W'), bool
        Patches whose norm (after centring, with ``center``) is below 1e-8: constant in every
        channel, or all zero.

    Examples
    --------
    >>> x = torch.rand(2, 3, 32, 32)
    >>> p, empty = extract_patches(x, 6)
    >>> p.shape, empty.shape
    (torch.Size([2, 27, 27, 108]), torch.Size([2, 27, 27]))
    """
    n, c, h, w = images.shape
    gh, gw = patch_grid_shape(h, w, patch_size)
    # Strided views copied once: as fast as unfold on GPU and ~70x faster than CPU im2col here.
    windows = images.unfold(2, patch_size, 1).unfold(3, patch_size, 1)  # (n, C, H', W', p, p)
    if center:
        windows = windows - windows.mean(dim=(4, 5), keepdim=True)
    patches = windows.permute(0, 2, 3, 1, 4, 5).reshape(n, gh, gw, c * patch_size * patch_size)
    empty = patches.norm(dim=-1) < EMPTY_PATCH_NORM
    return patches, empty
