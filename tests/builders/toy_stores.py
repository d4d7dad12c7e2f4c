"""Small synthetic slide stores for tests and benchmarks of the diffusion stage.

They follow the real store layout (``sedm.tiling.store``) so the dataset and trainer are exercised exactly
as on tiled slides, but take milliseconds to build and need no slide files. Each ``style`` index gives
a distinct stain palette, so tests can tell which slide a patch came from by its colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from sedm.tiling.store import create_store
from sedm.tiling.table import fraction_columns, tile_table_path

# per style: RGB of glass-free background tissue, then one colour per class (cycled)
_PALETTES = [
    [(225, 160, 200), (110, 50, 140), (235, 120, 160), (170, 90, 170), (250, 200, 220)],
    [(170, 200, 235), (40, 70, 150), (120, 160, 220), (70, 110, 190), (200, 215, 240)],
    [(215, 190, 140), (120, 80, 40), (200, 150, 90), (160, 110, 60), (235, 215, 170)],
]


def toy_palette(style: int) -> np.ndarray:
    """(1 + classes_max, 3) float palette of a style: row 0 unannotated tissue, row k class k."""
    return np.asarray(_PALETTES[style % len(_PALETTES)], dtype=np.float32)


def make_toy_store(path: str | Path, *, slide_id: str, size: int, classes: list[str], tile_size: int = 64,
                   mpp: float = 1.0, style: int = 0, seed: int = 0, levels: int = 2,
                   glass_fraction: float = 0.125) -> Path:
    """Write a ``size`` x ``size`` store at ``mpp`` µm/px plus its tile table; returns the store path.

    Layout: smooth random class regions with ~15 % unannotated tissue; a glass band on the right
    (``glass_fraction`` of the width, no tissue, not in the tile table). Image: palette colour per
    label, darker "nuclei" dots and pixel noise.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    k = len(classes)
    fields = ndimage.gaussian_filter(rng.standard_normal((k, size, size)), sigma=(0, size / 16, size / 16))
    labels = (fields.argmax(0) + 1).astype(np.uint8)
    unann = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 16)
    labels[unann > np.quantile(unann, 0.85)] = 0
    tissue = np.ones((size, size), np.uint8)
    glass = int(round(size * glass_fraction))
    if glass:
        tissue[:, size - glass:] = 0
        labels[:, size - glass:] = 0

    palette = toy_palette(style)
    colour_idx = np.where(labels == 0, 0, (labels - 1) % (len(palette) - 1) + 1)
    image = palette[colour_idx]
    nuclei = ndimage.gaussian_filter(rng.random((size, size)), 1.0) > 0.56
    image[nuclei & (labels > 0)] *= 0.55
    image += rng.normal(0, 6, image.shape)
    image[tissue == 0] = 242
    image = np.clip(image, 0, 255).astype(np.uint8)

    root = create_store(path, slide_id=slide_id, height=size, width=size, mpp=mpp, tile_size=tile_size,
                        levels=levels, classes=classes, provenance={"source": "toy"})
    chw = np.moveaxis(image, -1, 0)
    for level in range(levels):
        f = 2**level
        h = -(-size // f)
        down = chw[:, : h * f, : h * f].reshape(3, h, f, h, f).mean((2, 4)).astype(np.uint8) if f > 1 else chw
        root[str(level)][:] = down
    root["labels/annotation/0"][:] = labels
    root["labels/tissue/0"][:] = tissue

    rows = []
    cols = fraction_columns(classes)
    for r in range(-(-size // tile_size)):
        for c in range(-(-size // tile_size)):
            y, x = r * tile_size, c * tile_size
            t = tissue[y:y + tile_size, x:x + tile_size]
            if t.mean() < 0.05:
                continue
            lab = labels[y:y + tile_size, x:x + tile_size]
            fracs = np.bincount(lab.ravel(), minlength=k + 1) / lab.size
            rows.append({"slide_id": slide_id, "row": r, "col": c, "y": y, "x": x,
                         "tissue_fraction": float(t.mean()), **dict(zip(cols, map(float, fracs)))})
    pd.DataFrame(rows).to_parquet(tile_table_path(path), index=False)
    return path
