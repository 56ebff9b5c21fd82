"""Backbones of the deep SSL baselines, in plain torch (no torchvision / timm).

* :class:`ResNet18` -- the CIFAR variant used by solo-learn and the SMT paper's
  SimCLR / VICReg baselines: 3x3 stride-1 stem, no max-pool, so a 32x32 image
  keeps 32x32 maps in the first stage (a 4x4 map before global pooling).
* :class:`ViT` -- a small Vision Transformer with patch dropping, for MSN /
  PMSN, whose anchor views are masked by dropping patch tokens.

Both map images ``(B, 3, H, W)`` to features ``(B, out_dim)``, the
representation that the kNN protocol scores.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResNet18", "ViT", "vit_tiny"]


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # 1x1 projection when the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool).

    Parameters
    ----------
    width : int, default 64
        Channels of the first stage (64 is ResNet-18; the stages have
        ``width * (1, 2, 4, 8)`` channels).  Smaller widths are for tests and
        CPU budgets; the cost scales with ``width**2``.

    Attributes
    ----------
    out_dim : int
        ``8 * width`` (512 for ResNet-18).

    Notes
    -----
    ``forward``: ``(B, 3, H, W)`` float -> ``(B, out_dim)`` globally
    average-pooled features.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c_in = [], width
        for i, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = 8 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class _Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention then a 4x MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer with patch dropping (the masking of MSN).

    Parameters
    ----------
    image_size : int, default 32
    patch_size : int, default 4
        32x32 images with patch 4 give 64 tokens (+1 [CLS]).
    dim, depth, heads : int, default 192, 12, 3
        ViT-Tiny.
    mlp_ratio : float, default 4.0

    Attributes
    ----------
    out_dim : int
        ``dim``: the [CLS] token after the final LayerNorm is the feature.
    n_patches : int

    Notes
    -----
    ``forward(x, mask_ratio=0.0, generator=None)``: ``(B, 3, H, W)`` ->
    ``(B, dim)``.  With ``mask_ratio > 0`` a random ``round(mask_ratio *
    n_patches)`` patch tokens of each image are dropped *after* the positional
    embedding is added (MSN's "random masking"), so the encoder sees fewer
    tokens and costs less.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.n_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.n_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed   # (B, N, dim)
        n_drop = int(round(mask_ratio * self.n_patches))
        if n_drop > 0:
            b, n, d = tokens.shape
            noise = torch.rand(b, n, generator=generator, device=tokens.device)
            keep = noise.argsort(dim=1)[:, : n - n_drop]                              # (B, N - n_drop)
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, d))
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.norm(self.blocks(tokens))[:, 0]


def vit_tiny(**kw) -> ViT:
    """ViT-Tiny (dim 192, depth 12, 3 heads), patch 4 on 32x32 images."""
    return ViT(**{"dim": 192, "depth": 12, "heads": 3, "patch_size": 4, **kw})
