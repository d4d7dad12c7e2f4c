"""Preview grids written during training: one row per sample, to judge progress by eye.

Columns: layout (colour map) | the N style patches | generated image | the real content patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sedm.atomic import atomic_path

UNANNOTATED_RGB = (200, 200, 200)
_CLASS_RGB = [(230, 60, 60), (60, 160, 230), (240, 200, 40), (120, 200, 90), (180, 90, 200),
              (255, 140, 0), (0, 200, 180), (150, 150, 150)]


def layout_rgb(labels: np.ndarray) -> np.ndarray:
    """(H, W) label values -> (H, W, 3) uint8: grey for unannotated, one colour per class."""
    palette = np.array([UNANNOTATED_RGB] + [_CLASS_RGB[i % len(_CLASS_RGB)] for i in range(int(labels.max(initial=0)))],
                       dtype=np.uint8)
    return palette[labels]


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
        cells = [layout_rgb(labels[i])] + [_fit(s, size) for s in styles[i]] + [generated[i]]
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
