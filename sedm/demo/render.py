"""H&E-like rendering of a demo slide: stain concentrations per class, then Beer–Lambert to RGB.

The classes differ in morphology, not just colour, so a segmentation model has to learn texture:

* tumour: crowded large round/pleomorphic vesicular nuclei with nucleoli in pink-purple cytoplasm;
* stroma: wavy oriented eosinophilic collagen fibres with pale gaps and sparse spindle nuclei
  aligned with the fibres;
* necrosis: pale blotchy granular eosinophilic debris with fine dark nuclear dust and faint ghost
  nuclei, no organised structure.

Haematoxylin and eosin concentrations are rendered per pixel; the patient's style (absorbance
vectors, stain amounts, thickness, glass tint, blur, noise) only enters in :func:`beer_lambert`, so
all of a patient's slides share one look.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sedm.demo import nuclei
from sedm.demo.layout import DEMO_CLASSES, STRIP, Layout, smooth_noise, upsample
from sedm.demo.styles import StainStyle

TUMOUR, STROMA, NECROSIS = (DEMO_CLASSES.index(c) + 1 for c in ("tumour", "stroma", "necrosis"))

TUMOUR_SPACING_UM = 12.0
"""Grid spacing of tumour nuclei before jitter (crowded: neighbours nearly touch)."""
STROMA_SPACING_UM = 24.0
"""Mean distance between spindle nuclei (sparse)."""
DUST_SPACING_UM = 6.0
"""Mean distance between nuclear-dust clusters in necrosis."""
GHOST_SPACING_UM = 22.0
"""Mean distance between ghost nuclei in necrosis."""
FIBRE_WIDTH_UM = 1.2
"""Smoothing across collagen fibres (fibre width is ~2-3x this)."""
FIBRE_LENGTH_UM = 14.0
"""Smoothing along collagen fibres (fibres run for a few times this)."""
FIBRE_TEXTURE = (1024, 256)
"""Shape (across, along) of the periodic fibre texture, texels (powers of two)."""
FIBRE_ALONG_TEXEL_UM = 2.0
"""Texel length along the fibres (across them a texel is one level-0 pixel)."""
NOISE_TILE = 1021
"""Side of the periodic fine-noise tile (prime, so it never lines up with 256 px tiles)."""


def _poisson_centres(rng: np.random.Generator, size: int, spacing_px: float) -> tuple[np.ndarray, np.ndarray]:
    count = rng.poisson(size * size / spacing_px**2)
    return rng.integers(0, size, count), rng.integers(0, size, count)


def _grid_centres(rng: np.random.Generator, size: int, spacing_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Jittered grid: dense without the clumps and gaps of a Poisson process."""
    g = np.arange(spacing_px / 2, size, spacing_px)
    ys, xs = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    # alternate rows shifted half a spacing: hexagonal-ish packing
    xs = xs + (np.round(ys / spacing_px) % 2) * spacing_px / 2
    ys = ys + rng.uniform(-0.3, 0.3, ys.size) * spacing_px
    xs = xs + rng.uniform(-0.3, 0.3, xs.size) * spacing_px
    return np.clip(np.round(ys), 0, size - 1).astype(np.int64), np.clip(np.round(xs), 0, size - 1).astype(np.int64)


def _in_class(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray]:
    keep = labels[ys, xs] == value
    return ys[keep], xs[keep]


def _stamp_kind(rng: np.random.Generator, canvas: np.ndarray, kind: nuclei.NucleusKind, mpp: float,
                ys: np.ndarray, xs: np.ndarray, gain: tuple[float, float], n_kernels: int = 32) -> None:
    bank = nuclei.kernel_bank(rng, kind, mpp, n_kernels)
    which = rng.integers(0, n_kernels, ys.size)
    gains = rng.uniform(*gain, ys.size).astype(np.float32)
    nuclei.stamp(canvas, bank, ys, xs, which, gains)


def _stamp_spindles(rng: np.random.Generator, canvas: np.ndarray, layout: Layout, mpp: float,
                    ys: np.ndarray, xs: np.ndarray) -> None:
    """Spindle nuclei whose long axis follows the local fibre direction (perpendicular to grad flow)."""
    bins, variants = 16, 3
    angles = np.repeat((np.arange(bins) + 0.5) * np.pi / bins, variants)
    bank = nuclei.kernel_bank(rng, nuclei.SPINDLE, mpp, bins * variants, angles=angles)
    gy, gx = np.gradient(layout.flow)
    cy, cx = ys // layout.factor, xs // layout.factor
    fibre_angle = np.mod(np.arctan2(gx[cy, cx], -gy[cy, cx]) + rng.normal(0, 0.12, ys.size), np.pi)
    which = np.minimum((fibre_angle / np.pi * bins).astype(np.int64), bins - 1) * variants
    which += rng.integers(0, variants, ys.size)
    nuclei.stamp(canvas, bank, ys, xs, which, rng.uniform(0.9, 1.25, ys.size).astype(np.float32))


def _periodic_rows(tile: np.ndarray, y0: int, y1: int, size: int) -> np.ndarray:
    """Rows y0:y1 (``size`` columns) of the plane tiled with ``tile``: fine noise without size**2 draws."""
    rows = tile[np.arange(y0, y1) % tile.shape[0]]
    return np.tile(rows, (1, -(-size // tile.shape[1])))[:, :size]


def _fine_noise(rng: np.random.Generator, sigma_px: float, size: int) -> np.ndarray:
    tile = min(NOISE_TILE, size)
    field = ndimage.gaussian_filter(rng.standard_normal((tile, tile)).astype(np.float32), sigma_px, mode="wrap")
    return field / (field.std() + 1e-12)


def _fibre_texture(rng: np.random.Generator, mpp: float) -> np.ndarray:
    """Periodic (across, along) texture of streaks: FIBRE_WIDTH_UM wide, FIBRE_LENGTH_UM long, in 0..1."""
    t_across, t_along = FIBRE_TEXTURE
    sigma = (FIBRE_WIDTH_UM / mpp, FIBRE_LENGTH_UM / FIBRE_ALONG_TEXEL_UM)
    tex = ndimage.gaussian_filter(rng.standard_normal((t_across, t_along)).astype(np.float32), sigma, mode="wrap")
    return np.clip(0.5 + 0.45 * tex / (tex.std() + 1e-12), 0.0, 1.0)


def _fibres(tex: np.ndarray, layout: Layout, mpp: float, y0: int, y1: int) -> np.ndarray:
    """Collagen in rows y0:y1: the streak texture looked up at (flow, along) coordinates.

    Across the fibres a texel is one level-0 pixel, along them FIBRE_ALONG_TEXEL_UM; the streaks
    follow the level sets of ``layout.flow`` wherever they bend.
    """
    t_across, t_along = tex.shape
    size, f = layout.labels.shape[1], layout.factor
    offset = 4 * t_across  # keep coordinates positive so the integer cast floors
    across = upsample(layout.flow + offset, f, size, y0, y1).astype(np.int32)
    along = upsample(layout.along * (mpp / FIBRE_ALONG_TEXEL_UM) + offset, f, size, y0, y1).astype(np.int32)
    across &= t_across - 1
    across *= t_along
    along &= t_along - 1
    across += along
    return tex.ravel()[across]


def _at_points(coarse: np.ndarray, factor: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Values of :func:`upsample` (coarse) at level-0 pixels (ys, xs), without upsampling everything."""
    coords = np.stack([(ys + 0.5) / factor - 0.5, (xs + 0.5) / factor - 0.5])
    return ndimage.map_coordinates(coarse, coords, order=1, mode="nearest")


def _stamp_nuclei(rng: np.random.Generator, layout: Layout, mpp: float, blotch: np.ndarray) -> np.ndarray:
    """Haematoxylin of all nuclei (float32, level 0): tumour, spindles, nuclear dust and ghosts."""
    labels = layout.labels
    size, px = labels.shape[0], 1.0 / mpp
    nuc = np.zeros((size, size), dtype=np.float32)
    ys, xs = _in_class(labels, *_grid_centres(rng, size, TUMOUR_SPACING_UM * px), TUMOUR)
    keep = rng.random(ys.size) > 0.06
    _stamp_kind(rng, nuc, nuclei.TUMOUR, mpp, ys[keep], xs[keep], gain=(0.8, 1.3))
    _stamp_spindles(rng, nuc, layout, mpp, *_in_class(labels, *_poisson_centres(rng, size, STROMA_SPACING_UM * px),
                                                       STROMA))
    ys, xs = _in_class(labels, *_poisson_centres(rng, size, DUST_SPACING_UM * px), NECROSIS)
    keep = rng.random(ys.size) < np.clip(0.5 + 0.5 * _at_points(blotch, layout.factor, ys, xs), 0.05, 1.0)
    _stamp_kind(rng, nuc, nuclei.DUST, mpp, ys[keep], xs[keep], gain=(1.1, 1.7))  # dust clumps in debris clouds
    ys, xs = _in_class(labels, *_poisson_centres(rng, size, GHOST_SPACING_UM * px), NECROSIS)
    _stamp_kind(rng, nuc, nuclei.GHOST, mpp, ys, xs, gain=(0.15, 0.3), n_kernels=16)
    return nuc


def stain_concentrations(rng: np.random.Generator, layout: Layout, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel haematoxylin and eosin concentrations (float32, level 0) of a layout, style-free.

    All random draws happen up front; the per-pixel work runs in strips of rows, so temporaries
    stay small (the result does not depend on the strip height).
    """
    labels = layout.labels
    size, f = labels.shape[0], layout.factor
    n = layout.coarse.shape[0]
    um = f * mpp

    mottle_c = smooth_noise(rng, (n, n), 2.0)  # cell-scale unevenness (~8 µm)
    blotch_c = smooth_noise(rng, (n, n), 25.0 / um)  # debris clouds (~50 µm)
    grain_tile = _fine_noise(rng, 0.7 / mpp, size)  # granular debris / cytoplasm (~1 µm)
    tex = _fibre_texture(rng, mpp)
    conc_h = _stamp_nuclei(rng, layout, mpp, blotch_c)  # nuclei first; the background joins them below
    conc_e = np.empty_like(conc_h)

    for y0 in range(0, size, STRIP):
        y1 = min(size, y0 + STRIP)
        lab = labels[y0:y1]
        mottle = upsample(mottle_c, f, size, y0, y1)
        blotch = upsample(blotch_c, f, size, y0, y1)
        grain = _periodic_rows(grain_tile, y0, y1, size)
        fibres = _fibres(tex, layout, mpp, y0, y1)
        e = np.zeros(lab.shape, dtype=np.float32)
        h = np.zeros(lab.shape, dtype=np.float32)
        m = lab == TUMOUR
        e[m] = 0.40 + 0.06 * mottle[m] + 0.04 * grain[m]
        h[m] = 0.09 + 0.03 * mottle[m]
        m = lab == STROMA
        e[m] = 0.06 + 0.7 * fibres[m] * (0.85 + 0.15 * mottle[m])
        h[m] = 0.025
        m = lab == NECROSIS
        b, g = blotch[m], grain[m]
        e[m] = 0.33 + 0.09 * b + 0.07 * g
        h[m] = 0.07 + 0.04 * np.clip(b, 0, None) + 0.015 * g
        nuc = conc_h[y0:y1]
        e *= 1.0 - 0.45 * np.clip(nuc, 0.0, 1.0)  # nuclei displace cytoplasm
        conc_e[y0:y1] = e
        np.maximum(nuc, h, out=nuc)
    return conc_h, conc_e


def _drift(size: int, y0: int, y1: int, angle: float, amplitude: float) -> np.ndarray:
    """(rows, size) float32 factor from 1 - amplitude to 1 + amplitude, a linear ramp across the slide
    in direction ``angle`` (0 = down the rows)."""
    c, s = np.cos(angle), np.sin(angle)
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5) / size - 0.5
    xs = (np.arange(size, dtype=np.float32)[None, :] + 0.5) / size - 0.5
    ramp = np.float32(c) * ys + np.float32(s) * xs  # extremes ±(|c| + |s|) / 2 at the corners
    return (1.0 + np.float32(2 * amplitude / (abs(c) + abs(s))) * ramp).astype(np.float32)


def scanner(transmitted: np.ndarray, style: StainStyle) -> np.ndarray:
    """Colour saturation (mixing towards or away from the pixel's grey) and tone curve of the scanner,
    on (..., 3) float32 intensities in 0-255; returns the same shape."""
    t = transmitted / np.float32(255.0)
    if style.saturation != 1.0:
        grey = t @ np.array([0.299, 0.587, 0.114], np.float32)
        t = grey[..., None] + np.float32(style.saturation) * (t - grey[..., None])
        np.clip(t, 0.0, 1.0, out=t)
    if style.gamma != 1.0:
        np.power(t, np.float32(style.gamma), out=t)
    return t * np.float32(255.0)


def beer_lambert(conc_h: np.ndarray, conc_e: np.ndarray, style: StainStyle, mpp: float,
                 rng: np.random.Generator) -> np.ndarray:
    """RGB = glass * exp(-thickness * drift * (h * C_H * v_H + e * C_E * v_E)), through the scanner's
    colour saturation and tone curve, blurred and noisy, as uint8.

    Computed in strips of rows; the blur reads a halo of rows around each strip, so the result is
    the same as blurring the whole slide at once.
    """
    size = conc_h.shape[0]
    sigma = style.blur_um / mpp
    halo = int(3.0 * sigma + 0.5) + 1 if sigma > 0.05 else 0
    tile = min(NOISE_TILE, size)
    noise = [rng.standard_normal((tile, tile), dtype=np.float32) * np.float32(style.noise) for _ in range(3)]
    coef_h = [np.float32(style.thickness * style.h_amount * v) for v in style.h_vector]
    coef_e = [np.float32(style.thickness * style.e_amount * v) for v in style.e_vector]
    out = np.empty((*conc_h.shape, 3), dtype=np.uint8)
    for y0 in range(0, size, STRIP):
        y1 = min(size, y0 + STRIP)
        a, b = max(0, y0 - halo), min(size, y1 + halo)
        ch, ce = conc_h[a:b], conc_e[a:b]
        if halo:
            ch = ndimage.gaussian_filter(ch, sigma, truncate=3.0)
            ce = ndimage.gaussian_filter(ce, sigma, truncate=3.0)
        ch, ce = ch[y0 - a:y1 - a], ce[y0 - a:y1 - a]
        if style.gradient > 0:
            ce = ce * _drift(size, y0, y1, style.gradient_angle + np.pi / 2, style.gradient / 2)
            thick = _drift(size, y0, y1, style.gradient_angle, style.gradient)
            ch, ce = ch * thick, ce * thick
        light = np.empty((*ch.shape, 3), dtype=np.float32)
        for c in range(3):
            chan = ch * coef_h[c]
            chan += ce * coef_e[c]
            np.negative(chan, out=chan)
            np.exp(chan, out=chan)
            chan *= np.float32(style.background[c])
            light[..., c] = chan
        light = scanner(light, style)
        for c in range(3):
            chan = light[..., c]
            chan += _periodic_rows(noise[c], y0, y1, size)
            np.clip(chan, 0, 255, out=chan)
            out[y0:y1, :, c] = np.rint(chan)
    return out


def render_slide(rng: np.random.Generator, layout: Layout, style: StainStyle, mpp: float) -> np.ndarray:
    """(size, size, 3) uint8 level-0 RGB of a layout in a patient's style."""
    conc_h, conc_e = stain_concentrations(rng, layout, mpp)
    return beer_lambert(conc_h, conc_e, style, mpp, rng)
