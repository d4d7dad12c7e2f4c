"""Preview grids written during training: one row per sample, to judge progress by eye.

Columns: layout (colour map) | the N style patches | generated image | the real content patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sedm.atomic import atomic_path
from sedm.labels import colorize

def _fit(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


def preview_grid(labels: np.ndarray, styles: np.ndarray, generated: np.ndarray,
                 real: np.ndarray | None = None, pad: int = 2) -> np.ndarray:
    """labels (B, H, W), styles (B, N, h, w, 3), generated/real (B, H, W, 3) uint8 -> one RGB image."""
    b, size = labels.shape[0], labels.shape[1]
    rows = []
    for i in range(b):
        cells = [colorize(labels[i])] + [_fit(s, size) for s in styles[i]] + [generated[i]]
        if real is not None:
            cells.append(real[i])
        row = []
        for c in cells:
            row += [c, np.full((size, pad, 3), 255, np.uint8)]
        rows += [np.concatenate(row, axis=1), None]
    width = rows[0].shape[1]
    out = [r if r is not None else np.full((pad, width, 3), 255, np.uint8) for r in rows]
    return np.concatenate(out, axis=0)


def save_png(image: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
