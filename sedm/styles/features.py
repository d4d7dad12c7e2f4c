"""Stain statistics as additive sums over pixels, and the figures and features made from them.

Everything is a sum (pixel count, sums of HED optical density and of its outer products, of HSV
value and saturation and of their squares, of the Laplacian and its square), so blocks of a slide
are summed in any order and any grouping: dask adds them in a tree, and one slide of 10^10 pixels
costs no more memory than a few blocks. Tissue pixels and optical density are those of
:mod:`sedm.stain.statistics` (``tissue_hed``); a store's tissue mask narrows them further.

Sharpness is the variance of the Laplacian of the luminance (``skimage.color.rgb2gray``) over tissue
pixels, the usual focus measure of whole-slide QC: blur lowers it. It is taken inside each tile (the
store's chunk) and leaves out every tile's one-pixel rim, whose neighbours lie in another tile; a
block never needs its neighbours, so no overlap between dask chunks is read.

scipy.ndimage and skimage are imported by :func:`image_sums` only: the style table, evaluation and the
report import this module for :data:`FEATURES` and :func:`features`, and never see a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from sedm.stain.statistics import HED_CHANNELS, darkest, tissue_hed, tissue_pixels

_FIELDS = (("n", 1), ("hed", 3), ("hed_outer", 9), ("value", 1), ("value_sq", 1), ("sat", 1), ("sat_sq", 1),
           ("lap_n", 1), ("lap", 1), ("lap_sq", 1))
SLICES: dict[str, slice] = {}
_start = 0
for _name, _size in _FIELDS:
    SLICES[_name] = slice(_start, _start + _size)
    _start += _size
N_SUMS = _start
"""Length of the sums vector of :func:`image_sums`."""

FEATURES = ("od_mean_H", "od_mean_E", "od_mean_D", "od_std_H", "od_std_E", "od_std_D",
            "od_corr_HE", "od_corr_HD", "od_corr_ED", "brightness_mean", "brightness_std",
            "saturation_mean", "saturation_std", "log10_sharpness")
"""The stain features of a slide, in the cohort table and the style space (:mod:`sedm.styles.space`):
HED optical density mean, standard deviation and correlations (the covariance, with its scale
separated from its shape), HSV value and saturation mean and spread, and the sharpness on a log
scale (it spans orders of magnitude between a blurred and a sharp scan)."""


def image_sums(rgb: np.ndarray, tissue: np.ndarray | None = None) -> np.ndarray:
    """(N_SUMS,) float64 sums over the tissue pixels of one (H, W, 3) uint8 image (one tile).

    ``tissue`` (H, W) narrows the tissue pixels (a store's mask; :func:`tissue_hed`).
    """
    from scipy import ndimage  # here, not at the top: see the module docstring
    from skimage.color import rgb2gray

    out = np.zeros(N_SUMS)
    mask = tissue_pixels(rgb)
    if tissue is not None:
        mask &= tissue.astype(bool)
    n = int(mask.sum())
    if not n:
        return out
    hed = tissue_hed(rgb, mask)
    out[SLICES["n"]] = n
    out[SLICES["hed"]] = hed.sum(axis=0)
    out[SLICES["hed_outer"]] = (hed.T @ hed).ravel()
    top = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])[mask].astype(np.float64)
    bottom = darkest(rgb)[mask].astype(np.float64)
    value = top / 255.0  # HSV value and saturation, as the stain jitter scales them
    sat = np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)
    out[SLICES["value"]], out[SLICES["value_sq"]] = value.sum(), value @ value
    out[SLICES["sat"]], out[SLICES["sat_sq"]] = sat.sum(), sat @ sat
    if min(mask.shape) > 2:
        lap = ndimage.laplace(rgb2gray(rgb).astype(np.float64))[1:-1, 1:-1][mask[1:-1, 1:-1]]
        out[SLICES["lap_n"]], out[SLICES["lap"]], out[SLICES["lap_sq"]] = len(lap), lap.sum(), lap @ lap
    return out


def block_sums(rgb: np.ndarray, tissue: np.ndarray | None, tile: int) -> np.ndarray:
    """:func:`image_sums` of a (H, W, 3) block, added up tile by tile (``tile`` px squares), so the
    float temporaries stay a tile's whatever the block size."""
    out = np.zeros(N_SUMS)
    h, w = rgb.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = None if tissue is None else tissue[y:y + tile, x:x + tile]
            if t is not None and not t.any():
                continue
            out += image_sums(rgb[y:y + tile, x:x + tile], t)
    return out


def _mean_std(total: float, total_sq: float, n: float) -> dict[str, float]:
    mean = total / n
    return {"mean": mean, "std": math.sqrt(max(total_sq / n - mean**2, 0.0))}


def summarise(sums: np.ndarray) -> dict[str, Any]:
    """The figures of a sums vector: what the per-slide JSON holds (nulls without tissue pixels)."""
    n = float(sums[SLICES["n"]][0])
    base: dict[str, Any] = {"channels": list(HED_CHANNELS),
                            "space": "HED optical density (skimage.color.rgb2hed), tissue pixels",
                            "tissue_pixels": int(n)}
    if n == 0:
        return {**base, "od_mean": None, "od_cov": None, "brightness": None, "saturation": None, "sharpness": None}
    mean = sums[SLICES["hed"]] / n
    cov = sums[SLICES["hed_outer"]].reshape(3, 3) / n - np.outer(mean, mean)
    lap_n = float(sums[SLICES["lap_n"]][0])
    sharp = None
    if lap_n:
        lap = _mean_std(float(sums[SLICES["lap"]][0]), float(sums[SLICES["lap_sq"]][0]), lap_n)
        sharp = {"laplacian_var": lap["std"] ** 2, "pixels": int(lap_n)}
    return {**base, "od_mean": mean.tolist(), "od_cov": ((cov + cov.T) / 2).tolist(),
            "brightness": _mean_std(float(sums[SLICES["value"]][0]), float(sums[SLICES["value_sq"]][0]), n),
            "saturation": _mean_std(float(sums[SLICES["sat"]][0]), float(sums[SLICES["sat_sq"]][0]), n),
            "sharpness": sharp}


def features(stats: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`FEATURES` of one :func:`summarise` dict (NaN where undefined)."""
    nan = float("nan")
    if stats.get("od_mean") is None:
        return dict.fromkeys(FEATURES, nan)
    mean, cov = np.asarray(stats["od_mean"]), np.asarray(stats["od_cov"])
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    out = {f"od_mean_{c}": float(m) for c, m in zip(HED_CHANNELS, mean)}
    out.update({f"od_std_{c}": float(s) for c, s in zip(HED_CHANNELS, std)})
    for i, j in ((0, 1), (0, 2), (1, 2)):
        den = std[i] * std[j]
        out[f"od_corr_{HED_CHANNELS[i]}{HED_CHANNELS[j]}"] = float(cov[i, j] / den) if den > 0 else nan
    out["brightness_mean"], out["brightness_std"] = stats["brightness"]["mean"], stats["brightness"]["std"]
    out["saturation_mean"], out["saturation_std"] = stats["saturation"]["mean"], stats["saturation"]["std"]
    lap = (stats.get("sharpness") or {}).get("laplacian_var")
    out["log10_sharpness"] = math.log10(lap) if lap else nan
    return {k: out[k] for k in FEATURES}
