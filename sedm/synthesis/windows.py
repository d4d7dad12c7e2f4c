"""Window geometry shared by layout and style sampling: where a patch may lie relative to a tile.

Tile tables list tiles by their top-left pixel; a patch can be smaller than a tile (then it lies
inside the tile, so "this style patch came from a tissue tile" stays literally true) or larger
(then it contains the tile). Windows near the store border are clipped to lie inside the store.
"""

from __future__ import annotations

import numpy as np


def window_in_tile(rng: np.random.Generator, start: int, tile: int, extent: int, size: int) -> int:
    """Random top-left coordinate (one axis) of a ``size`` window placed by the tile at ``start``.

    ``size <= tile``: the window lies inside the tile (the part of it inside the store);
    ``size > tile``: the window contains the tile. Either way the window lies in ``[0, extent)``
    whenever ``extent >= size``.
    """
    stop = min(start + tile, extent)
    if size <= stop - start:
        lo, hi = start, stop - size
    else:
        lo, hi = stop - size, start
    pos = int(rng.integers(lo, hi + 1)) if hi >= lo else lo
    return max(0, min(pos, extent - size))


def read_padded(read, y: int, x: int, h: int, w: int, extent: tuple[int, int], fill: int,
                channels: int | None) -> np.ndarray:
    """``read(y, x, h, w)`` for a window that may stick out of a ``extent`` = (H, W) array; the
    outside is ``fill`` (unannotated labels, white glass)."""
    shape = (h, w) if channels is None else (h, w, channels)
    out = np.full(shape, fill, dtype=np.uint8)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, extent[0]), min(x + w, extent[1])
    if y1 > y0 and x1 > x0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = read(y0, x0, y1 - y0, x1 - x0)
    return out
