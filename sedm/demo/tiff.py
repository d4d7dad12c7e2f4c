"""Pyramidal tiled TIFF writing that both openslide and tiffslide read with a µm/px.

Levels go in the main IFD chain (openslide ignores SubIFD pyramids) and the resolution tags carry
the µm/px (a generic TIFF has no vendor metadata).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from sedm.atomic import atomic_path


def downsample2(rgb: np.ndarray, strip: int = 2048) -> np.ndarray:
    """2x2 mean of an (H, W, 3) uint8 image, processed in row strips to bound memory."""
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    out = np.empty((h, w, rgb.shape[2]), dtype=np.uint8)
    for y0 in range(0, h, strip):
        y1 = min(h, y0 + strip)
        a = rgb[2 * y0:2 * y1, : 2 * w].astype(np.uint16)
        out[y0:y1] = ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)
    return out


def write_pyramidal_tiff(path: str | Path, rgb: np.ndarray, mpp: float, *, tile: int = 256,
                         quality: int = 90, min_size: int = 256, max_levels: int = 8) -> int:
    """Write ``rgb`` (H, W, 3 uint8, level 0 at ``mpp`` µm/px) with 2x-downsampled levels.

    Levels are added while the level still spans at least ``min_size`` pixels on its short side.
    Returns the number of levels written. The file appears atomically.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    levels = [rgb]
    while len(levels) < max_levels and min(levels[-1].shape[:2]) // 2 >= min_size:
        levels.append(downsample2(levels[-1]))
    big = rgb.nbytes > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tif:
        for k, level in enumerate(levels):
            res = 1e4 / (mpp * 2**k)  # pixels per centimetre
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg",
                      compressionargs={"level": quality}, resolution=(res, res), resolutionunit="CENTIMETER",
                      subfiletype=0 if k == 0 else 1, metadata=None,
                      description=f"sedm synthetic slide level {k}" if k == 0 else None)
    return len(levels)
