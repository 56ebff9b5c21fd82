"""A C4-rotation group-equivariant CIFAR ResNet-18 in plain torch (p4 group convolutions, Cohen & Welling 2016).

The feature maps are fields over the group p4 (translations and rotations by
multiples of 90 degrees): ``(B, C, 4, H, W)``, one ``C``-dim fibre per
rotation ``r``.  Rotating the input by 90 degrees rotates every map and
shifts the rotation axis cyclically by one::

    f(rot90(x, 1)) == rot90(roll(f(x), 1, dims=2), 1)      # exactly, on the pixel grid

* :class:`P4Conv` with ``lifting=True`` (Z2 -> p4) correlates the input with the
  4 rotated copies of each filter; with ``lifting=False`` (p4 -> p4) each
  output rotation ``r`` uses the filter rotated by ``r`` *and* with its input
  rotation axis rolled by ``r``.  Both build one ``(4 C_out, 4 C_in, k, k)``
  weight and make a single ``F.conv2d`` call;
* BatchNorm shares its statistics over the rotation axis (``BatchNorm3d`` on
  ``(B, C, 4, H, W)``), which keeps equivariance in training mode too;
* downsampling is a stride-1 convolution followed by ``AvgPool2d(2)``: a
  stride-2 convolution samples pixels 0, 2, ..., 30 of a 32-px map, which
  rot90 maps to 31, 29, ..., 1, so it would break exact equivariance;
  2x2 pooling blocks of an even grid are permuted among themselves.

``tied=False`` gives the unstructured control of Homomorphic SSL: the same
tensor shapes and layers, but each convolution has free weights
``(4 C_out, 4 C_in, k, k)``, so its ``4 C`` channels are split into 4
"fibres" arbitrarily.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["P4Conv", "P4ResNet18", "rot90"]


def rot90(x: torch.Tensor, k) -> torch.Tensor:
    """Rotate the last two (spatial) axes by ``k`` quarter turns (counter-clockwise)."""
    return torch.rot90(x, int(k) % 4, dims=(-2, -1))


class P4Conv(nn.Module):
    """Group convolution Z2 -> p4 (``lifting``) or p4 -> p4, stride 1, 'same' padding.

    Parameters
    ----------
    c_in, c_out : int
        Channels per fibre.
    kernel_size : int
        Odd.
    lifting : bool
        Input ``(B, c_in, H, W)`` (True) or ``(B, c_in, 4, H, W)`` (False).
    tied : bool, default True
        Rotation-tied weights (equivariant); False: free weights of the same shapes.

    Notes
    -----
    ``forward`` returns ``(B, c_out, 4, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, lifting: bool, tied: bool = True) -> None:
        super().__init__()
        self.c_in, self.c_out, self.k, self.lifting, self.tied = c_in, c_out, kernel_size, lifting, tied
        g_in = 1 if lifting else 4
        shape = ((c_out, c_in, kernel_size, kernel_size) if lifting else (c_out, c_in, 4, kernel_size, kernel_size))
        if not tied:
            shape = (4 * c_out, g_in * c_in, kernel_size, kernel_size)
        # He init on the fan-in of one output channel: c_in x (1 or 4 rotations) x k x k
        std = math.sqrt(2.0 / (g_in * c_in * kernel_size ** 2))
        self.weight = nn.Parameter(torch.randn(shape) * std)

    def full_weight(self) -> torch.Tensor:
        """The ``(4 c_out, g_in c_in, k, k)`` weight of the single ``conv2d``; output channel ``4 c + r``."""
        if not self.tied:
            return self.weight
        w = self.weight
        if self.lifting:
            ws = [rot90(w, r) for r in range(4)]                                   # each (c_out, c_in, k, k)
        else:
            ws = [rot90(torch.roll(w, r, dims=2), r) for r in range(4)]           # input rotation s <- s - r
        return torch.stack(ws, dim=1).flatten(0, 1).flatten(1, -3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        y = F.conv2d(x.reshape(b, -1, h, w), self.full_weight(), padding=self.k // 2)
        return y.view(b, self.c_out, 4, h, w)


def _pool(x: torch.Tensor) -> torch.Tensor:
    b, c, g, h, w = x.shape
    return F.avg_pool2d(x.reshape(b, c * g, h, w), 2).view(b, c, g, h // 2, w // 2)


class _P4Block(nn.Module):
    """Basic residual block on p4 fields; ``stride`` 2 pools after the first convolution."""

    def __init__(self, c_in: int, c_out: int, stride: int, tied: bool) -> None:
        super().__init__()
        self.conv1 = P4Conv(c_in, c_out, 3, False, tied)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = P4Conv(c_out, c_out, 3, False, tied)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.stride = stride
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj = P4Conv(c_in, c_out, 1, False, tied)
            self.proj_bn = nn.BatchNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = _pool if self.stride == 2 else (lambda t: t)
        out = F.relu(self.bn1(down(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        short = x if self.proj is None else self.proj_bn(down(self.proj(x)))
        return F.relu(out + short)


class P4ResNet18(nn.Module):
    """ResNet-18 (CIFAR variant) with p4 group convolutions.

    Parameters
    ----------
    width : int, default 16
        Channels per fibre in the first stage (stages ``width * (1, 2, 4, 8)``);
        each layer holds ``4 x`` as many channels, and costs about a plain
        ResNet-18 of width ``4 * width`` per pixel, plus the downsampling
        convolutions at twice the resolution.
    tied : bool, default True
        False: the unstructured control (free weights, same shapes).

    Attributes
    ----------
    out_dim : int
        ``8 * width``: the fibre size and the size of :meth:`forward`'s invariant features.

    Notes
    -----
    :meth:`fibres`: ``(B, 3, H, W)`` -> ``(B, out_dim, 4)``, spatially pooled
    fibres (``H, W`` divisible by 8); :meth:`forward`: their mean over the
    group, ``(B, out_dim)``, rotation-invariant when ``tied``.
    """

    def __init__(self, width: int = 16, tied: bool = True) -> None:
        super().__init__()
        self.stem = P4Conv(3, width, 3, True, tied)
        self.stem_bn = nn.BatchNorm3d(width)
        blocks, c_in = [], width
        for i, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            blocks += [_P4Block(c_in, c_out, stride, tied), _P4Block(c_out, c_out, 1, tied)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_dim, self.tied = 8 * width, tied

    def fibres(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.relu(self.stem_bn(self.stem(x)))).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fibres(x).mean(dim=-1)
