"""QA montage of a synthetic store: does each image follow its layout and take on the style?

One column per sample; rows: the layout as a colour map, the style patches it was conditioned on
(tiled into one cell), the generated image. A glance tells layout adherence (row 1 vs 3) and
style transfer (row 2 vs 3) apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sedm.atomic import atomic_path
from sedm.labels import colorize

MIN_CELL = 128
GAP = 4
HEADER = 16


def _cell(img: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(img).resize((size, size), Image.Resampling.NEAREST)


def _style_cell(patches: np.ndarray, size: int) -> Image.Image:
    cols = math.ceil(math.sqrt(len(patches)))
    rows = math.ceil(len(patches) / cols)
    sub = size // cols
    top = (size - rows * sub) // 2  # centred vertically when the grid is not square
    cell = Image.new("RGB", (size, size), (255, 255, 255))
    for i, p in enumerate(patches):
        cell.paste(_cell(p, sub), ((i % cols) * sub, top + (i // cols) * sub))
    return cell


def write_montage(path: str | Path, labels: np.ndarray, styles: list[np.ndarray], images: np.ndarray,
                  title: str = "") -> None:
    """Save the montage PNG: ``labels`` (n, H, W), ``styles`` n arrays (N, h, w, 3), ``images`` (n, H, W, 3)."""
    n = len(images)
    size = max(MIN_CELL, images.shape[1] if n else MIN_CELL)
    width = max(1, n) * (size + GAP) + GAP
    height = HEADER + 3 * (size + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(canvas).text((GAP, 2), title + "  rows: layout | style patches | generated", fill=(0, 0, 0))
    for i in range(n):
        x = GAP + i * (size + GAP)
        canvas.paste(_cell(colorize(labels[i]), size), (x, HEADER + GAP))
        canvas.paste(_style_cell(styles[i], size), (x, HEADER + GAP + (size + GAP)))
        canvas.paste(_cell(images[i], size), (x, HEADER + GAP + 2 * (size + GAP)))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
