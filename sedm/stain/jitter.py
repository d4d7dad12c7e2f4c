"""Stain colour jitter: the "stain_aug" arms' answer to scanner and lab variation, and the
style-consistent restaining of diffusion training samples (``diffusion.style_jitter``).

Following Tellez et al. (2019, "Quantifying the effects of data augmentation and stain colour
normalization ...") and RandStainNA: an RGB image is moved into haematoxylin / eosin / DAB optical
density space, each stain channel is scaled and shifted at random (``s' = a*s + b`` with
``a ~ U(1-sigma, 1+sigma)`` and ``b ~ U(-bias, bias)``), moved back, and then jittered in HSV (hue
shift, saturation and brightness scale). Geometry is never touched, so the label mask stays valid.
With all strengths 0 the transform is the identity (exactly, after uint8 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

from sedm.stain.statistics import od_to_rgb, rgb_to_od


def hed_jitter_map(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) with ``od' = od @ matrix + offset`` equal to scaling / shifting each HED channel.

    Folding RGB->HED, the jitter and HED->RGB into one 3x3 map makes the transform one matmul.
    """
    matrix = (hed_from_rgb * alpha[None, :]) @ rgb_from_hed
    return matrix.astype(np.float32), (beta @ rgb_from_hed).astype(np.float32)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB in [0, 1] -> HSV in [0, 1], same dtype; vectorised (skimage's is slower)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    safe_c = np.where(c > 0, c, 1.0)
    h = np.where(v == r, ((g - b) / safe_c) % 6.0, np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
    h = np.where(c > 0, h / 6.0, 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([h, s, v], axis=-1).astype(rgb.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`: channel n is ``v * (1 - s * clip(min(k, 4 - k), 0, 1))`` with
    ``k = (n' + 6 h) mod 6`` and n' = 5, 3, 1 for R, G, B (branch-free form of the sector table)."""
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = (np.array([5, 3, 1], hsv.dtype) + h * 6) % 6
    return v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


@dataclass(frozen=True)
class StainJitter:
    """Random HED + HSV colour jitter of one (H, W, 3) uint8 RGB image.

    hed_sigma: multiplicative jitter per stain channel; hed_bias: additive jitter (optical density);
    hue: maximal hue shift (fraction of the hue circle); saturation / brightness: maximal relative
    scale of HSV saturation / value.
    """

    hed_sigma: float = 0.05
    hed_bias: float = 0.05
    hue: float = 0.02
    saturation: float = 0.1
    brightness: float = 0.1

    @classmethod
    def from_config(cls, cfg: dict) -> "StainJitter":
        return cls(**{k: float(cfg[k]) for k in ("hed_sigma", "hed_bias", "hue", "saturation", "brightness")})

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.draw(rng))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        """One random jitter: (HED scale, HED shift, hue shift, saturation scale, value scale)."""
        alpha = rng.uniform(1 - self.hed_sigma, 1 + self.hed_sigma, size=3)
        beta = rng.uniform(-self.hed_bias, self.hed_bias, size=3)
        dh = rng.uniform(-self.hue, self.hue)
        ds = rng.uniform(1 - self.saturation, 1 + self.saturation)
        dv = rng.uniform(1 - self.brightness, 1 + self.brightness)
        return alpha, beta, dh, ds, dv

    @staticmethod
    def apply(image: np.ndarray, jitter: tuple[np.ndarray, np.ndarray, float, float, float]) -> np.ndarray:
        """``image`` with the jitter of :meth:`draw`; one draw applied to several images restains them alike."""
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        alpha, beta, dh, ds, dv = jitter
        matrix, offset = hed_jitter_map(alpha, beta)
        rgb = od_to_rgb(rgb_to_od(image) @ matrix + offset)
        hsv = rgb_to_hsv(rgb.astype(np.float32) / np.float32(255.0))
        hsv[..., 0] = (hsv[..., 0] + np.float32(dh)) % np.float32(1.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(ds), 0.0, 1.0)
        hsv[..., 2] = np.clip(hsv[..., 2] * np.float32(dv), 0.0, 1.0)
        return np.clip(np.rint(hsv_to_rgb(hsv) * np.float32(255.0)), 0, 255).astype(np.uint8)
