"""Tile geometry: the tile grid at the target µm/px, where each target pixel lies on the tissue
mask, how much tissue each tile holds, and the 2x2 means that make the image pyramid."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The tile grid of a slide at the target µm/px.

    ``height``/``width`` is the slide's extent at the target µm/px; the store spans ``rows x cols``
    whole tiles (``padded_height``/``padded_width``), the excess being glass.
    """

    height: int
    width: int
    tile_size: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def padded_height(self) -> int:
        return self.rows * self.tile_size

    @property
    def padded_width(self) -> int:
        return self.cols * self.tile_size

    @property
    def max_levels(self) -> int:
        """Pyramid levels worth making: halving until the whole slide fits in one tile (one more level
        only shrinks that tile)."""
        return 1 + math.ceil(math.log2(max(self.rows, self.cols)))

    def extent(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y, x, h, w): top-left pixel of tile (row, col) and the part of it inside the slide."""
        t = self.tile_size
        y, x = row * t, col * t
        return y, x, min(t, self.height - y), min(t, self.width - x)


def target_extent(dimensions: tuple[int, int], source_mpp: float, target_mpp: float) -> tuple[int, int]:
    """(height, width) in pixels at ``target_mpp`` of a slide of level-0 ``dimensions`` (w, h).

    Rounded down (with a tolerance for float noise) so that no target pixel lies outside the slide.
    """
    w0, h0 = dimensions
    f = source_mpp / target_mpp
    return int(math.floor(h0 * f + 1e-6)), int(math.floor(w0 * f + 1e-6))


def nearest_index(n_target: int, target_mpp: float, mask_mpp: float, n_mask: int) -> np.ndarray:
    """Index into a mask axis at ``mask_mpp`` of each of ``n_target`` pixels at ``target_mpp``.

    Pixel centres are mapped (``floor((i + 0.5) * target / mask)``): nearest-neighbour resampling.
    """
    idx = np.floor((np.arange(n_target) + 0.5) * (target_mpp / mask_mpp)).astype(np.int64)
    return np.minimum(idx, n_mask - 1)


def tile_tissue_counts(mask: np.ndarray, iy: np.ndarray, ix: np.ndarray, tile_size: int,
                       rows: int, cols: int) -> np.ndarray:
    """(rows, cols) number of tissue pixels per tile of the nearest-upsampled ``mask``.

    Exact, cheap and without the full-resolution mask: ``A_y @ mask @ A_x.T``, where ``A_y[r, j]``
    counts the target rows of tile row ``r`` that map to mask row ``j``. ``A`` is banded (a tile
    row covers a few consecutive mask rows), so each product is a weighted sum of mask rows per
    tile row (``np.add.reduceat``), in integers, not a dense BLAS product: that one left OpenBLAS
    threads spinning on the cores the tile workers start on.
    """
    rowsum = _tile_sums(mask.astype(np.int32), iy, tile_size, rows)        # (rows, tw)
    return _tile_sums(np.ascontiguousarray(rowsum.T), ix, tile_size, cols).T.astype(np.int64)


def _tile_sums(values: np.ndarray, index: np.ndarray, tile_size: int, n_tiles: int) -> np.ndarray:
    """(n_tiles, ...) sum over target pixels ``i`` of tile ``i // tile_size`` of ``values[index[i]]``
    (``index`` ascending, as :func:`nearest_index` gives)."""
    tile = np.arange(len(index)) // tile_size
    key = tile * values.shape[0] + index  # ascending: runs of one (tile, row) pair
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    weights = np.diff(np.r_[starts, len(key)]).astype(values.dtype)
    pairs = values[index[starts]] * weights.reshape(-1, *[1] * (values.ndim - 1))
    pair_tile = tile[starts]
    first = np.flatnonzero(np.r_[True, pair_tile[1:] != pair_tile[:-1]])  # first pair of each tile
    out = np.zeros((n_tiles, *values.shape[1:]), dtype=values.dtype)
    out[pair_tile[first]] = np.add.reduceat(pairs, first, axis=0)
    return out


def mean2x2(chw: np.ndarray) -> np.ndarray:
    """2x2 mean of a (C, H, W) uint8 image (H, W even), rounded half up: ``(a + b + c + d + 2) // 4``.

    Column pairs are summed through a uint16 view (each element holds two neighbouring pixels, low
    byte first on little-endian machines): contiguous loops instead of numpy's stride-2 ones,
    which are slower."""
    chw = np.ascontiguousarray(chw)
    if sys.byteorder == "little":
        pairs = chw.view(np.uint16)
        s = (pairs & 0xFF) + (pairs >> 8)  # column pairs, then row pairs
        s = s[:, 0::2] + s[:, 1::2]
    else:
        s = np.add(chw[:, 0::2], chw[:, 1::2], dtype=np.uint16)
        s = np.add(s[:, :, 0::2], s[:, :, 1::2])
    s += 2
    s >>= 2
    return s.astype(np.uint8)
