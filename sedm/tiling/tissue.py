"""Tissue detection on a low-resolution thumbnail, and its QC image.

Stained tissue is coloured (H&E, IHC) or at least darker than glass, so a pixel is tissue when its
saturation or its darkness is above an Otsu threshold. Otsu alone splits *any* image in two – glass
noise on an empty slide, or pale from dark tissue on a crowded one – so each threshold is clamped
to a range that only real stain reaches (``SAT_RANGE``, ``GREY_RANGE``). Sizes are given in µm² so
one config works at any thumbnail µm/px.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from sedm.atomic import write_bytes

SAT_RANGE = (0.05, 0.15)
"""Clamp of the saturation threshold: glass with scanner noise stays below 0.05, pale eosin reaches 0.15."""
GREY_RANGE = (0.35, 0.80)
"""Clamp of the grey threshold (fraction of white): only clearly dark pixels count when unsaturated."""
CLOSING_UM = 16.0
"""Closing radius in µm: bridges the pale gaps between nuclei and stroma without merging fragments."""
QC_COLOR = (0, 200, 0)


def detect_tissue(rgb: np.ndarray, mpp: float, min_object_um2: float = 5000.0,
                  min_hole_um2: float = 5000.0) -> np.ndarray:
    """(H, W) bool tissue mask of an (H, W, 3) uint8 thumbnail at ``mpp`` µm/px.

    All-glass images give an all-False mask (the clamped thresholds find nothing to split).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB, got {rgb.shape}")
    # float work in place where the values stay the same: this stage sets the peak memory of tiling
    # a large slide
    img = rgb.astype(np.float32)
    np.divide(img, 255.0, out=img)
    img = ndi.gaussian_filter(img, sigma=(1, 1, 0))  # damp JPEG/sensor noise
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)  # = max/min(axis=2), faster
    positive = hi > 0
    np.subtract(hi, lo, out=lo)  # lo := hi - lo
    np.maximum(hi, 1e-6, out=hi)
    sat = np.divide(lo, hi, out=lo)
    sat[~positive] = 0.0
    del hi, positive
    mask = sat > _otsu(sat, *SAT_RANGE)
    del sat, lo
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    del img, r, g, b
    mask |= grey < _otsu(grey, *GREY_RANGE)
    del grey
    radius = max(1, round(CLOSING_UM / mpp))
    mask = ndi.binary_closing(np.pad(mask, radius), structure=_disk(radius))[radius:-radius, radius:-radius]
    px = mpp * mpp
    mask = _drop_small_objects(mask, min_object_um2 / px)
    return _fill_small_holes(mask, min_hole_um2 / px)


def save_tissue_qc(path: str | Path, rgb: np.ndarray, mask: np.ndarray) -> None:
    """PNG of the thumbnail with the tissue outline drawn, for a human to eyeball the detection."""
    write_bytes(path, tissue_qc_png(rgb, mask))


def tissue_qc_png(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """The bytes :func:`save_tissue_qc` writes (rendered apart, so tiling can draw it while its
    first tiles are decoded and write it last)."""
    edge = mask & ~ndi.binary_erosion(mask, border_value=0)
    edge = ndi.binary_dilation(edge)  # 2-3 px wide so it survives a scaled-down view
    out = rgb.copy()
    out[edge] = QC_COLOR
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")
    return buf.getvalue()


def _otsu(values: np.ndarray, lo: float, hi: float) -> float:
    return float(np.clip(threshold_otsu(values), lo, hi))  # a flat image yields its own value, then clamped


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius


def _drop_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    labels, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel()) >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, min_px: float) -> np.ndarray:
    labels, n = ndi.label(~mask)  # 4-connected background, so diagonal tissue gaps do not leak
    if n == 0:
        return mask
    fill = np.bincount(labels.ravel()) < min_px
    fill[0] = False
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[border] = False  # glass touching the image edge is outside, not a hole
    return mask | fill[labels]
