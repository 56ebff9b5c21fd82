"""Two-view augmentations on batched image tensors, on the device (plain torch).

Every recipe is random resized crop (aspect 3/4-4/3) back to 32x32, colour
jitter, grayscale, optional Gaussian blur and solarisation, horizontal flip
0.5, then normalisation by the CIFAR-10 channel statistics.  The per-method
recipes of solo-learn's CIFAR configs are in :data:`RECIPES`:

* ``"asymmetric"`` (the default of :class:`TwoViewAugment`): solo-learn's
  ``augmentations/asymmetric.yaml``, used there for BYOL, Barlow Twins, DINO,
  MoCo-v3 and NNCLR: crop scale 0.08-1, jitter 0.4/0.4/0.2/0.1 at p 0.8,
  grayscale 0.2, solarisation 0.0 / 0.2 (per view), no blur;
* ``"simclr"``: ``symmetric.yaml`` (SimCLR): jitter 0.8/0.8/0.8/0.2 at p 0.8,
  grayscale 0.2, Gaussian blur p 0.5 (sigma 0.1-2 px, as solo-learn applies
  it to 32-px images), no solarisation;
* ``"vicreg"``: solo-learn's inline VICReg recipe: crop scale 0.2-1, jitter
  0.4/0.4/0.2/0.1, grayscale 0.2, solarisation 0.1 on both views;
* ``"carp"``: CARP's two global crops (DINO's): crop scale 0.2-1, jitter
  0.4/0.4/0.2/0.1, grayscale 0.2, blur 1.0 / 0.1, solarisation 0.0 / 0.2;
* ``"manifoldclr"``: ManifoldCLR's CIFAR config: crop scale 0.2-1, jitter
  0.4/0.4/0.4/0.1 at p 0.8, grayscale 0.1.

Each :class:`~smt.ssl.base.SSLMethod` names its recipe (``augment_recipe``);
``Trainer(augment=...)`` or ``--augment`` overrides it.

Differences from torchvision, for speed on whole batches:

* the crop box is drawn once (no 10 retries); sides longer than the image
  are clipped to it;
* the crop is resampled bilinearly with ``grid_sample`` (torchvision
  resizes with antialiasing);
* the four jitter operations run in a fixed order (torchvision permutes it);
* the hue shift is a rotation of the chroma plane in YIQ space, which is the
  usual linear approximation of an HSV hue shift.

Every random draw comes from the ``torch.Generator`` passed in, so a run is
reproducible and resumable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smt.augment import LUMA_WEIGHTS

__all__ = ["TwoViewAugment", "RECIPES", "recipe", "random_resized_crop", "color_jitter", "grayscale",
           "gaussian_blur", "solarize", "normalize", "CIFAR_MEAN", "CIFAR_STD"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _rand(n: int, gen: torch.Generator | None, device, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def random_resized_crop(x: torch.Tensor, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        flip_prob: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random box of each image (and maybe mirror it), resized to ``size``.

    Parameters
    ----------
    x : torch.Tensor, float, shape (B, C, H, W)
    size : int
        Output side.
    scale : (float, float)
        Range of the box area as a fraction of the image area.
    ratio : (float, float)
        Range of the box aspect ratio (width / height), drawn log-uniformly.
    flip_prob : float
        Probability of a horizontal flip (folded into the same resampling).
    gen : torch.Generator, optional

    Returns
    -------
    torch.Tensor, shape (B, C, size, size)
    """
    b, dev = x.shape[0], x.device
    area = _rand(b, gen, dev, *scale)
    log_r = _rand(b, gen, dev, math.log(ratio[0]), math.log(ratio[1]))
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)   # box sides as fractions of the image
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * (2 * _rand(b, gen, dev) - 1)              # box centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * _rand(b, gen, dev) - 1)
    flip = torch.where(_rand(b, gen, dev) < flip_prob, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def grayscale(x: torch.Tensor, prob: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Replace each image by its luma (3 equal channels) with probability ``prob``."""
    apply = (_rand(x.shape[0], gen, x.device) < prob).view(-1, 1, 1, 1)
    return torch.where(apply, _luma(x).expand_as(x), x)


def solarize(x: torch.Tensor, prob: float, threshold: float = 0.5,
             gen: torch.Generator | None = None) -> torch.Tensor:
    """Invert the pixels above ``threshold`` of each image with probability ``prob``."""
    apply = (_rand(x.shape[0], gen, x.device) < prob).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, prob: float, sigma=(0.1, 2.0), gen: torch.Generator | None = None) -> torch.Tensor:
    """Blur each image with a Gaussian of random width, with probability ``prob``.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, H, W)
    prob : float
    sigma : (float, float), default (0.1, 2.0)
        Range of the standard deviation (pixels) drawn per image.  solo-learn
        applies PIL's blur with this range in pixels of whatever image it
        gets, so on 32-px CIFAR images it is strong; kept as it is.
    gen : torch.Generator, optional

    Returns
    -------
    torch.Tensor, same shape.
    """
    b, c, h, w = x.shape
    s = _rand(b, gen, x.device, *sigma)
    apply = (_rand(b, gen, x.device) < prob).view(-1, 1, 1, 1)
    radius = min(max(1, math.ceil(3 * sigma[1])), min(h, w) - 1)   # reflect padding needs radius < side
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / s[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)          # (B*C, 2r+1)
    # separable, one kernel per image: grouped convolutions over the B*C channels
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c).view(b, c, h, w)
    return torch.where(apply, y, x)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 prob: float = 0.8, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue of each image (with probability ``prob``).

    Parameters
    ----------
    x : torch.Tensor, shape (B, 3, H, W), values in [0, 1]
    brightness, contrast, saturation : float
        Factors are drawn from ``[1 - v, 1 + v]``.
    hue : float
        Shift drawn from ``[-hue, hue]`` turns of the colour wheel (at most 0.5).
    prob : float
    gen : torch.Generator, optional

    Returns
    -------
    torch.Tensor, same shape, clipped to [0, 1].
    """
    b, dev = x.shape[0], x.device
    fb = _rand(b, gen, dev, 1 - brightness, 1 + brightness).view(-1, 1, 1, 1)
    fc = _rand(b, gen, dev, 1 - contrast, 1 + contrast).view(-1, 1, 1, 1)
    fs = _rand(b, gen, dev, 1 - saturation, 1 + saturation).view(-1, 1, 1, 1)
    angle = _rand(b, gen, dev, -hue, hue) * 2 * math.pi
    apply = (_rand(b, gen, dev) < prob).view(-1, 1, 1, 1)
    y = (x * fb).clamp(0, 1)
    mean = _luma(y).mean(dim=(2, 3), keepdim=True)           # contrast blends with the mean grey
    y = ((y - mean) * fc + mean).clamp(0, 1)
    gray = _luma(y)
    y = ((y - gray) * fs + gray).clamp(0, 1)
    # hue: rotate the (I, Q) chroma plane of YIQ by the drawn angle
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=dev, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(b, 3, 3, device=dev, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = from_yiq @ rot @ to_yiq                                # (B, 3, 3)
    y = torch.einsum("bij,bjhw->bihw", mat, y).clamp(0, 1)
    return torch.where(apply, y, x)


def normalize(x: torch.Tensor, mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    """Subtract the channel means and divide by the channel stds."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` in 0-255 -> float32 in [0, 1]; floats pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


@dataclass
class TwoViewAugment:
    """Draw two augmented views of a batch (default: solo-learn's asymmetric CIFAR recipe).

    Parameters
    ----------
    size : int, default 32
    min_scale : float, default 0.08
    brightness, contrast, saturation, hue : float, default 0.4, 0.4, 0.2, 0.1
    jitter_prob : float, default 0.8
    gray_prob : float, default 0.2
    solarize_prob : (float, float), default (0.0, 0.2)
        Per view.
    blur_prob : (float, float), default (0.0, 0.0)
        Per view (:func:`gaussian_blur`).
    flip_prob : float, default 0.5
    name : str, default "asymmetric"
        The recipe's name, for the records of a run.

    Notes
    -----
    ``aug(images, gen) -> (view1, view2)``: uint8 or [0, 1] float
    ``(B, 3, H, W)`` -> two normalised float32 ``(B, 3, size, size)``.
    """

    size: int = 32
    min_scale: float = 0.08
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    solarize_prob: tuple = (0.0, 0.2)
    blur_prob: tuple = (0.0, 0.0)
    flip_prob: float = 0.5
    name: str = "asymmetric"

    def view(self, x: torch.Tensor, solarize_prob: float, gen: torch.Generator | None,
             blur_prob: float = 0.0) -> torch.Tensor:
        """One augmented view of ``x`` (float in [0, 1]), normalised."""
        y = random_resized_crop(x, self.size, (self.min_scale, 1.0), flip_prob=self.flip_prob, gen=gen)
        y = color_jitter(y.clamp(0, 1), self.brightness, self.contrast, self.saturation, self.hue,
                         self.jitter_prob, gen)
        y = grayscale(y, self.gray_prob, gen)
        if blur_prob > 0:  # no draws without blur: the part-1 recipe's random stream is unchanged
            y = gaussian_blur(y, blur_prob, gen=gen)
        y = solarize(y, solarize_prob, gen=gen)
        return normalize(y)

    def __call__(self, images: torch.Tensor, gen: torch.Generator | None = None):
        x = to_float(images)
        return (self.view(x, self.solarize_prob[0], gen, self.blur_prob[0]),
                self.view(x, self.solarize_prob[1], gen, self.blur_prob[1]))


RECIPES = {
    "asymmetric": TwoViewAugment(),
    "simclr": TwoViewAugment(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, solarize_prob=(0.0, 0.0),
                             blur_prob=(0.5, 0.5), name="simclr"),
    "vicreg": TwoViewAugment(min_scale=0.2, solarize_prob=(0.1, 0.1), name="vicreg"),
    "carp": TwoViewAugment(min_scale=0.2, blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2), name="carp"),
    "manifoldclr": TwoViewAugment(min_scale=0.2, saturation=0.4, gray_prob=0.1, solarize_prob=(0.0, 0.0),
                                  name="manifoldclr"),
}


def recipe(name: str) -> TwoViewAugment:
    """The two-view augmentation named ``name`` (a key of :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]
