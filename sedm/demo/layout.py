"""Where the tissue is and which class each part of it belongs to, for one demo slide.

Everything is decided on a coarse grid (:data:`LAYOUT_UM` µm/px) from smooth random fields, then
the same fields are interpolated to level 0 and thresholded again. So the level-0 class map has
smooth borders, and the coarse map (what the GeoJSON annotations are traced from) agrees with it up
to a few level-0 pixels along borders, like a careful hand annotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEMO_CLASSES = ("tumour", "stroma", "necrosis")
"""Classes the demo renders, in the order of their values in :class:`Layout` maps (1, 2, 3)."""
GLASS = 0
"""Value of background (no tissue) in :class:`Layout` maps."""

LAYOUT_UM = 4.0
"""µm/px of the coarse layout grid."""
REGION_UM = 70.0
"""Smoothing length of the class fields: class regions are a few hundred µm across."""
BORDER_UM = 16.0
"""Smoothing length of the small-scale warp that makes region and tissue borders irregular."""
HOLE_UM = 25.0
"""Smoothing length of the hole field (holes of a few tens of µm in the tissue)."""
TISSUE_FRACTION = 0.45
"""Share of the slide covered by tissue before holes are punched."""
HOLE_FRACTION = 0.03
"""Share of the tissue removed as holes."""
STRIP = 256
"""Rows of level 0 processed at a time: bounded temporaries, cache-friendly."""
MARGIN = 0.03
"""Glass margin along the slide edges, as a fraction of the slide side."""


@dataclass(frozen=True)
class Layout:
    """Class maps of one slide. Values: :data:`GLASS` or ``1 + index`` into :data:`DEMO_CLASSES`."""

    labels: np.ndarray
    """(size, size) uint8 class map at level 0."""
    coarse: np.ndarray
    """(n, n) uint8 class map on the coarse grid; pixel (i, j) covers level-0 [i*f, (i+1)*f)."""
    factor: int
    """Level-0 pixels per coarse pixel (f)."""
    flow: np.ndarray
    """(n, n) float32 coarse stream function (level-0 px): stroma fibres follow its level sets."""
    along: np.ndarray
    """(n, n) float32 coarse coordinate (level-0 px) that grows along the fibres, roughly."""


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _interp_rows(padded: np.ndarray, factor: int) -> np.ndarray:
    """Linear interpolation along axis 0 by an integer factor, pixel centres aligned.

    ``padded`` holds m rows plus one neighbour row above and below; the result has m * factor rows.
    """
    m = padded.shape[0] - 2
    out = np.empty((m, factor, *padded.shape[1:]), dtype=padded.dtype)
    for r in range(factor):
        pos = (r + 0.5) / factor - 0.5  # offset of output sub-row r from its coarse row centre
        lo = 0 if pos < 0 else 1  # padded index of the upper neighbour, relative to the coarse row
        w = np.float32(pos + 1 - lo)
        np.multiply(padded[lo:lo + m], 1 - w, out=out[:, r])
        out[:, r] += w * padded[lo + 1:lo + 1 + m]
    return out.reshape(m * factor, *padded.shape[1:])


def upsample(coarse: np.ndarray, factor: int, size: int, y0: int = 0, y1: int | None = None) -> np.ndarray:
    """Rows ``y0:y1`` of the coarse field bilinearly interpolated to level 0 (``size`` columns).

    Pixel centres are aligned and edges clamped: the same values as ``scipy.ndimage.zoom(...,
    order=1, grid_mode=True, mode="nearest")``, at a fraction of the cost (the integer factor makes
    the weights periodic), and any row window gives the rows of the full result exactly, so slides
    can be rendered in strips.
    """
    y1 = size if y1 is None else y1
    n_rows, n_cols = coarse.shape
    r0, r1 = y0 // factor, min(n_rows, -(-y1 // factor))
    block = coarse[np.clip(np.arange(r0 - 1, r1 + 1), 0, n_rows - 1)]  # rows r0-1 .. r1, clamped
    block = np.concatenate([block[:, :1], block, block[:, -1:]], axis=1)
    cols = np.ascontiguousarray(_interp_rows(np.ascontiguousarray(block.T), factor)[:size].T)
    return _interp_rows(cols, factor)[y0 - r0 * factor:y1 - r0 * factor]


def _classify(margin: np.ndarray, diffs: list[np.ndarray]) -> np.ndarray:
    """Class map from the tissue margin (glass where < 0) and class-field differences ``f_k - f_1``.

    The class is 1 + the index of the largest of (0, *diffs), i.e. the argmax of the class fields
    (first wins ties). Differences interpolate exactly like the fields, so the level-0 map needs one
    upsampled field less, and it is cheaper than ``np.argmax`` on a stack.
    """
    labels = np.ones(margin.shape, dtype=np.uint8)
    best = np.zeros(margin.shape, dtype=np.float32)
    for k, diff in enumerate(diffs, start=2):
        labels[diff > best] = k
        np.maximum(best, diff, out=best)
    labels[margin < 0] = GLASS
    return labels


def _balance(fields: list[np.ndarray], inside: np.ndarray, steps: int = 30) -> np.ndarray:
    """Per-class offsets that make the argmax areas inside tissue about equal (blob sizes vary a lot)."""
    k = len(fields)
    bias = np.zeros(k, dtype=np.float32)
    values = [f[inside] for f in fields]
    if not values[0].size:
        return bias
    margin = np.ones(values[0].shape, dtype=np.float32)
    for _ in range(steps):
        diffs = [v + b - values[0] - bias[0] for v, b in zip(values[1:], bias[1:])]
        frac = np.bincount(_classify(margin, diffs), minlength=k + 1)[1:] / values[0].size
        bias += 0.8 * (1.0 / k - frac).astype(np.float32)
    return bias


def make_layout(rng: np.random.Generator, size: int, mpp: float) -> Layout:
    """A random slide layout: irregular tissue blobs with holes, split into blob-shaped class regions."""
    factor = max(1, int(round(LAYOUT_UM / mpp)))
    n = -(-size // factor)
    um = factor * mpp  # µm per coarse pixel
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n - 0.5

    # Tissue: a large-scale blob field, flat in the middle and pulled down towards the edges, ragged border.
    edge = np.maximum(np.abs(yy), np.abs(xx))  # 0 at the centre, 0.5 at the slide edge
    radius = np.sqrt(yy**2 + xx**2)
    envelope = -80.0 * np.clip(radius - 0.25, 0, None) ** 2  # flat inside, falls off past a quarter side
    envelope[edge > 0.5 - MARGIN] = -1e3  # glass all round the edge
    tissue = (smooth_noise(rng, (n, n), n / 7) + envelope + 0.25 * smooth_noise(rng, (n, n), BORDER_UM / um))
    tissue_thr = float(np.quantile(tissue, 1.0 - TISSUE_FRACTION))
    holes = smooth_noise(rng, (n, n), HOLE_UM / um)
    inside = tissue >= tissue_thr
    hole_thr = float(np.quantile(holes[inside], 1.0 - HOLE_FRACTION)) if inside.any() else np.inf

    # Classes: argmax of independent smooth fields, borders warped by small-scale noise, areas balanced.
    warp_sd = 0.12
    class_fields = [smooth_noise(rng, (n, n), REGION_UM / um) + warp_sd * smooth_noise(rng, (n, n), BORDER_UM / um)
                    for _ in DEMO_CLASSES]
    bias = _balance(class_fields, inside & (holes <= hole_thr))
    diffs = [f + b - class_fields[0] - bias[0] for f, b in zip(class_fields[1:], bias[1:])]
    margin = np.minimum(tissue - tissue_thr, hole_thr - holes)
    coarse = _classify(margin, diffs)
    labels = np.empty((size, size), dtype=np.uint8)
    for y0 in range(0, size, STRIP):
        y1 = min(size, y0 + STRIP)
        labels[y0:y1] = _classify(upsample(margin, factor, size, y0, y1),
                                  [upsample(d, factor, size, y0, y1) for d in diffs])

    # Stroma fibres: level sets of a tilted plane plus a warp whose gradient bends them by tens of degrees.
    theta = rng.uniform(0, np.pi)
    warp = smooth_noise(rng, (n, n), 40.0 / um)
    gy, gx = np.gradient(warp)
    warp *= 0.35 / (float(np.sqrt(np.mean(gy**2 + gx**2))) + 1e-12)  # |grad| < 1 mostly: no whorls
    coords = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5)
    flow = (coords[0] * np.sin(theta) + coords[1] * np.cos(theta) + warp) * factor
    along = (coords[0] * np.cos(theta) - coords[1] * np.sin(theta)) * factor
    return Layout(labels=labels, coarse=coarse, factor=factor, flow=flow.astype(np.float32),
                  along=along.astype(np.float32))
