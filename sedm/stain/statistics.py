"""Tissue pixels, optical density and the stain statistics built on them (numpy and torch).

Style in H&E is, first of all, how much of which dye absorbs how much light. Beer–Lambert makes the
optical density ``OD = -log(I / I0)`` additive in the dyes, so distances between mean ODs compare
stains where RGB distances would mix stain with brightness. Statistics are taken over *tissue*
pixels only (darkest channel below :data:`TISSUE_MAX`, STEDM's tissue rule), so glass in a patch does
not dilute the stain. The torch twin of the moments feeds the style encoder and must agree with the
numpy one (tested); both take tissue from :data:`TISSUE_MAX` and optical density from :func:`od_of_levels`.

torch is imported inside :func:`od_moments_torch` only: the whole-slide statistics (``sedm style-stats``),
the style table, evaluation and the report import this module and use no tensor, and ``import torch``
costs seconds of start-up per job (``tests/test_startup.py`` keeps their imports free of it). Likewise
skimage (with the parts of scipy it loads) inside :func:`tissue_hed`: the style table, evaluation and the
report never convert a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

TISSUE_MAX = 230
"""A pixel is tissue when its darkest channel is below this (8-bit grey level)."""
HED_CHANNELS = ("H", "E", "D")
OD_CHANNELS = ("R", "G", "B")
OD_MATCH_MAX_FACTOR = 10.0
"""The most :func:`match_od_means` scales a channel's optical density by (or divides it by)."""


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) bool: True where the pixel is tissue."""
    return darkest(rgb) < TISSUE_MAX


def darkest(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) -> (...) the darkest channel; elementwise over the channel planes, several times faster
    than a reduction over the short last axis."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def od_of_levels(levels, log=np.log):
    """Optical density ``-log((I + 1) / 256)`` of 8-bit grey levels ``I`` held as floats: a numpy array
    with ``np.log``, a tensor with ``torch.log``. The +1 keeps black finite and white at OD 0."""
    return -log((levels + 1.0) / 256.0)


def rgb_to_od(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> optical density (float32, :func:`od_of_levels`)."""
    return od_of_levels(rgb.astype(np.float32))


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`, rounded and clipped to uint8."""
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def tissue_hed(img: np.ndarray, tissue: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) float64 HED optical densities (``skimage.color.rgb2hed``) of the tissue pixels of one
    (H, W, 3) uint8 image, row-major. ``tissue`` (H, W) bool narrows them further (a store's tissue
    mask, say); the pixel rule of :func:`tissue_pixels` always applies, so glass inside a mask region
    never counts. Every HED statistic of sedm goes through here."""
    from skimage.color import rgb2hed  # here, not at the top: see the module docstring

    mask = tissue_pixels(img)
    if tissue is not None:
        mask &= tissue
    if not mask.any():
        return np.empty((0, 3))
    return rgb2hed(img)[mask].astype(np.float64)


def mean_tissue_od(images: np.ndarray) -> np.ndarray | None:
    """Mean RGB optical density (3,) over the tissue pixels of (..., H, W, 3) uint8 images; None
    without tissue. The one-number-per-channel summary the style-transfer measures compare."""
    rgb = np.asarray(images).reshape(-1, 3)
    tissue = tissue_pixels(rgb)
    if not tissue.any():
        return None
    return rgb_to_od(rgb[tissue]).astype(np.float64).mean(axis=0)


def od_moments_torch(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [-1, 1] -> (B, 6): mean and std of the RGB optical density over tissue
    pixels (all pixels of a patch without tissue). Parameter-free; no gradient flows into images."""
    import torch  # here, not at the top: see the module docstring

    with torch.no_grad():
        rgb = torch.round((images.float().clamp(-1, 1) + 1) * 127.5)
        od = od_of_levels(rgb, torch.log).flatten(2)  # (B, 3, HW)
        tissue = (rgb.amin(dim=1) < TISSUE_MAX).flatten(1).float()  # (B, HW)
        weight = torch.where(tissue.sum(1, keepdim=True) > 0, tissue, torch.ones_like(tissue))
        weight = (weight / weight.sum(1, keepdim=True))[:, None]
        mean = (od * weight).sum(-1)
        var = ((od - mean[..., None]) ** 2 * weight).sum(-1)
        return torch.cat([mean, var.clamp_min(0).sqrt()], dim=1)


def match_od_means(images: "torch.Tensor", style_images: "torch.Tensor", strength: float) -> "torch.Tensor":
    """(B, 3, H, W) images and (B, N, 3, h, w) style patches, both in [-1, 1] -> the images with the
    optical density of each RGB channel scaled so that its tissue mean moves ``strength`` of the way
    (geometrically) to the style patches' mean.

    A multiplicative change of dye amount, as Beer-Lambert has it: glass (OD 0) stays glass, structure
    and the ratio of dark to light stay, only how much each channel absorbs changes. Factors are clamped
    to [1/:data:`OD_MATCH_MAX_FACTOR`, :data:`OD_MATCH_MAX_FACTOR`] so a near-empty tile cannot blow up."""
    import torch  # here, not at the top: see the module docstring

    if strength <= 0:
        return images
    b, n = style_images.shape[:2]
    target = od_moments_torch(style_images.flatten(0, 1)).view(b, n, -1).mean(1)[:, :3]
    current = od_moments_torch(images)[:, :3]
    factor = (target / current.clamp_min(1e-3)).clamp(1 / OD_MATCH_MAX_FACTOR, OD_MATCH_MAX_FACTOR) ** strength
    with torch.no_grad():
        levels = torch.round((images.float().clamp(-1, 1) + 1) * 127.5)
        od = od_of_levels(levels, torch.log) * factor[:, :, None, None]
        return ((256.0 * torch.exp(-od) - 1.0) / 127.5 - 1.0).clamp(-1, 1).to(images.dtype)


@dataclass
class HedAccumulator:
    """Running sums of HED optical densities (``skimage.color.rgb2hed``) over tissue pixels.

    Sums, not means, so shards contribute independently and a resumed job adds exactly the numbers
    an uninterrupted one would.
    """

    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(3))
    count: int = 0

    def add(self, images: np.ndarray) -> None:
        """Add (..., H, W, 3) uint8 RGB images."""
        rgb = images.reshape(-1, images.shape[-3], images.shape[-2], 3)
        for img in rgb:
            hed = tissue_hed(img)
            if not len(hed):
                continue
            self.total += hed.sum(axis=0)
            self.total_sq += (hed**2).sum(axis=0)
            self.count += len(hed)

    def merge(self, other: "HedAccumulator") -> None:
        self.total += other.total
        self.total_sq += other.total_sq
        self.count += other.count

    def to_array(self) -> np.ndarray:
        """(7,) float64: sums, sums of squares, count (for storing inside a shard)."""
        return np.concatenate([self.total, self.total_sq, [self.count]])

    @classmethod
    def from_array(cls, a: np.ndarray) -> "HedAccumulator":
        return cls(np.array(a[:3], dtype=np.float64), np.array(a[3:6], dtype=np.float64), int(a[6]))

    def summary(self) -> dict:
        """{"mean": [H, E, D], "std": [H, E, D], "pixels": n}; means null without tissue pixels."""
        if self.count == 0:
            return {"mean": None, "std": None, "pixels": 0}
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "pixels": self.count}
