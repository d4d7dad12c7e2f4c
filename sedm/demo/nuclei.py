"""Nuclei as stamped kernels: a small bank of shapes per kind, pasted at thousands of centres.

A slide holds ~10^4 nuclei; drawing each in Python would take minutes. Instead each kind (tumour,
spindle, dust, ghost) gets a bank of a few dozen pre-rendered kernels (shape, size, chromatin
texture) and all nuclei that use one kernel are pasted in one vectorised ``np.maximum.at``.
Sizes are given in µm so they stay realistic at any slide resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class NucleusKind:
    """Shape statistics of one kind of nucleus (lengths in µm)."""

    diameter_um: tuple[float, float]
    """Range of the long-axis length."""
    aspect: tuple[float, float]
    """Range of long / short axis."""
    irregularity: float
    """Amplitude of the angular harmonics that make the outline pleomorphic (0 = ellipse)."""
    rim: float
    """Extra darkness at the nuclear membrane (vesicular chromatin); 0 = uniform."""
    texture: float
    """Amplitude of the chromatin texture."""
    nucleolus: float
    """Darkness of an off-centre nucleolus; 0 = none."""
    fragments: int = 1
    """Blobs per kernel (>1: karyorrhectic nuclear dust)."""


TUMOUR = NucleusKind(diameter_um=(8.0, 12.5), aspect=(1.0, 1.5), irregularity=0.10, rim=0.45, texture=0.35,
                     nucleolus=0.5)
SPINDLE = NucleusKind(diameter_um=(10.0, 15.0), aspect=(3.5, 5.0), irregularity=0.03, rim=0.0, texture=0.15,
                      nucleolus=0.0)
DUST = NucleusKind(diameter_um=(1.0, 3.0), aspect=(1.0, 1.6), irregularity=0.15, rim=0.0, texture=0.1,
                   nucleolus=0.0, fragments=3)
GHOST = NucleusKind(diameter_um=(7.0, 10.0), aspect=(1.0, 1.4), irregularity=0.12, rim=0.9, texture=0.4,
                    nucleolus=0.0)


def _blob(rng: np.random.Generator, kind: NucleusKind, px_per_um: float, angle: float,
          yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """One nucleus outline with chromatin texture on the grid (yy, xx), centred at 0; values 0..~1.5."""
    length = rng.uniform(*kind.diameter_um) * px_per_um
    a = length / 2
    b = a / rng.uniform(*kind.aspect)
    c, s = np.cos(angle), np.sin(angle)
    u, v = xx * c + yy * s, -xx * s + yy * c
    phi = np.arctan2(v / b, u / a)
    wobble = 1.0 + sum(kind.irregularity / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble
    alpha = np.clip((1.0 - rho) * b + 0.5, 0.0, 1.0)  # ~1 px anti-aliased edge
    texture = ndimage.gaussian_filter(rng.standard_normal(yy.shape), max(0.6, 0.6 * px_per_um))
    texture /= texture.std() + 1e-12
    value = 0.75 + kind.rim * np.clip(rho, 0, 1) ** 3 + kind.texture * texture
    if kind.nucleolus:
        ny, nx = rng.uniform(-0.35, 0.35, 2) * b
        r2 = ((yy - ny) ** 2 + (xx - nx) ** 2) / max(0.8 * px_per_um, 1.0) ** 2
        value = value + kind.nucleolus * np.exp(-r2)
    return alpha * np.clip(value, 0.2, None)


def kernel_bank(rng: np.random.Generator, kind: NucleusKind, mpp: float, count: int,
                angles: np.ndarray | None = None) -> list[np.ndarray]:
    """``count`` float32 kernels (odd square arrays, nucleus centred); random angles unless given."""
    px_per_um = 1.0 / mpp
    extent = kind.diameter_um[1] * (1.0 + kind.irregularity) + (4.0 if kind.fragments > 1 else 0.0)
    half = int(np.ceil(extent * px_per_um / 2)) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    bank = []
    for i in range(count):
        angle = float(angles[i]) if angles is not None else rng.uniform(0, np.pi)
        if kind.fragments == 1:
            kernel = _blob(rng, kind, px_per_um, angle, yy, xx)
        else:  # a few tiny fragments scattered around the centre
            kernel = np.zeros_like(yy)
            for _ in range(int(rng.integers(1, kind.fragments + 1))):
                dy, dx = rng.uniform(-2.0, 2.0, 2) * px_per_um
                kernel = np.maximum(kernel, _blob(rng, kind, px_per_um, rng.uniform(0, np.pi), yy - dy, xx - dx))
        bank.append(kernel.astype(np.float32))
    return bank


def stamp(canvas: np.ndarray, bank: list[np.ndarray], ys: np.ndarray, xs: np.ndarray,
          which: np.ndarray, gains: np.ndarray) -> None:
    """Paste ``gains[i] * bank[which[i]]`` centred at (ys[i], xs[i]) into ``canvas`` by maximum, in place.

    Kernels are clipped at the canvas border.
    """
    h, w = canvas.shape
    for k, kernel in enumerate(bank):
        sel = np.flatnonzero(which == k)
        if sel.size == 0:
            continue
        half = kernel.shape[0] // 2
        ky, kx = np.nonzero(kernel > 1e-3)
        kv = kernel[ky, kx]
        py = ys[sel, None] + (ky - half)[None, :]
        px = xs[sel, None] + (kx - half)[None, :]
        vals = gains[sel, None] * kv[None, :]
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        np.maximum.at(canvas.reshape(-1), (py * w + px)[ok], vals[ok].astype(canvas.dtype))
