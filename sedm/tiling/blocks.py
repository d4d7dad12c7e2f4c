"""Units of work and the tiler that does them.

A unit of work is one shard: a :class:`Block` (the tissue tiles of one shard of a tile row, for the
image levels and the annotation mask) or a :class:`TissueBand` (the tissue tiles of one shard of
the tissue mask, bands of whole tile rows). :class:`BlockTiler` turns each into its shard files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sedm.ome import downsample_labels
from sedm.tiling.geometry import Grid, mean2x2
from sedm.tiling.shards import ShardWriter
from sedm.tiling.store import IMAGE_FILL


@dataclass(frozen=True)
class Block:
    """The tissue tiles of one shard: tile row ``row``, tile columns ``cols`` (ascending)."""

    row: int
    cols: tuple[int, ...]


@dataclass(frozen=True)
class TissueBand:
    """The tissue tiles (row, col) of one shard of the tissue mask (a band of tile rows)."""

    cells: tuple[tuple[int, int], ...]


def with_tissue_bands(blocks: Iterator[Block], cells: Sequence[tuple[int, int]],
                      band_rows: int) -> Iterator[Block | TissueBand]:
    """``blocks`` with the tissue band of each band of ``band_rows`` tile rows just before its
    first block, so the band's work spreads over the run like the blocks'."""
    by_band: dict[int, list[tuple[int, int]]] = {}
    for cell in cells:
        by_band.setdefault(cell[0] // band_rows, []).append(cell)
    for block in blocks:
        band = by_band.pop(block.row // band_rows, None)
        if band is not None:
            yield TissueBand(tuple(band))
        yield block


def shard_blocks(cells: Sequence[tuple[int, int]], shard_tiles: int) -> Iterator[Block]:
    """The cells (sorted row-major) grouped by the shard holding them: shards span ``shard_tiles``
    tile columns of one tile row, starting at column 0."""
    key, cols = None, []
    for row, col in cells:
        k = (row, col // shard_tiles)
        if cols and k != key:
            yield Block(key[0], tuple(cols))
            cols = []
        key = k
        cols.append(col)
    if cols:
        yield Block(key[0], tuple(cols))


class BlockTiler:
    """Turns one :class:`Block` into its shards (image levels, tissue mask, labels) and its rows of
    the tile table. Called from several threads: it only reads shared state, and each block is one
    shard, so no two threads write the same file. ``writers``, ``ann_writers`` and
    ``tissue_writers`` hold one writer per pyramid level."""

    def __init__(self, *, grid: Grid, source: Any, mask: np.ndarray, counts: np.ndarray, iy: np.ndarray,
                 ix: np.ndarray, annotations: list, classes: list[str], scale: float, writers: list[ShardWriter],
                 ann_writers: list[ShardWriter], tissue_writers: list[ShardWriter]) -> None:
        self.grid, self.source, self.mask, self.counts, self.iy, self.ix = grid, source, mask, counts, iy, ix
        self.classes, self.scale = classes, scale
        self.writers, self.ann_writers, self.tissue_writers = writers, ann_writers, tissue_writers
        self.index = None
        if annotations:
            from sedm.tiling.annotations import AnnotationIndex

            self.index = AnnotationIndex(list(annotations), classes)  # built once, shared read-only
        t = grid.tile_size
        self.n_labels = len(classes) + 1
        self.no_label_counts = np.zeros(self.n_labels, np.int64)
        self.no_label_counts[0] = t * t  # unannotated

    def __call__(self, block: Block | TissueBand) -> list[tuple]:
        """Write the block's shards; returns (row, col, y, x, tissue pixels, label counts) per tile
        (none for a tissue band)."""
        if isinstance(block, TissueBand):
            self._write_tissue(block)
            return []
        self._write_image(block)
        label_counts = self._write_labels(block)
        t, row = self.grid.tile_size, block.row
        return [(row, col, row * t, col * t, int(self.counts[row, col]), n)
                for col, n in zip(block.cols, label_counts)]

    def _read_chw(self, row: int, col: int) -> np.ndarray:
        """(3, t, t) uint8 tile, padded with glass beyond the slide."""
        t = self.grid.tile_size
        y, x, h, w = self.grid.extent(row, col)
        if h == t and w == t:
            rgb = self.source.read(x, y, w, h)
        else:
            rgb = np.full((t, t, 3), IMAGE_FILL, dtype=np.uint8)
            rgb[:h, :w] = self.source.read(x, y, w, h)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def _write_image(self, block: Block) -> None:
        """Pixels of every level; those of whole tissue tiles are stored unpacked (lz4 would gain
        next to nothing on decoded texture; tiles with glass in them it packs)."""
        row, area = block.row, self.grid.tile_size ** 2
        with contextlib.ExitStack() as stack:  # one shard per level, written tile by tile
            shards = [stack.enter_context(w.open(w.shard_of((0, row, block.cols[0])))) for w in self.writers]
            for col in block.cols:
                chw = self._read_chw(row, col)
                unpacked = bool(self.counts[row, col] == area)
                for k, shard in enumerate(shards):
                    if k:
                        chw = mean2x2(chw)
                    shard.add((0, row, col), chw, unpacked=unpacked)

    def _write_tissue(self, band: TissueBand) -> None:
        """Tissue masks by nearest lookup into the thumbnail mask; full tiles (the bulk, known from
        ``counts``) are written as constants, so only tissue borders are looked up."""
        t = self.grid.tile_size
        chunks, full = {}, {}
        for row, col in band.cells:
            if self.counts[row, col] == t * t:
                full[(row, col)] = 1
                continue
            y, x, h, w = self.grid.extent(row, col)
            tissue = np.zeros((t, t), dtype=np.uint8)
            tissue[:h, :w] = self.mask[self.iy[y:y + h, None], self.ix[None, x:x + w]]
            chunks[(row, col)] = tissue
        _write_levels(self.tissue_writers, chunks, full)

    def _write_labels(self, block: Block) -> list[np.ndarray]:
        """Label masks and per-tile label counts. Rasterised tile by tile, not once per block: a
        block-wide window was slower and, through float
        rounding of pixel centres exactly on polygon edges, not identical to the tile's own window
        (a few pixels per slide would depend on the shard size)."""
        if self.index is None:
            return [self.no_label_counts] * len(block.cols)
        from sedm.tiling.annotations import rasterize

        t = self.grid.tile_size
        chunks, counts = {}, []
        for col in block.cols:
            y, x, h, w = self.grid.extent(block.row, col)
            labels = np.asarray(rasterize(self.index, self.classes, shape=(t, t), scale=self.scale, offset=(y, x)),
                                dtype=np.uint8)
            if h < t or w < t:  # padding is glass: unannotated
                labels = labels.copy()
                labels[h:] = 0
                labels[:, w:] = 0
            chunks[(block.row, col)] = labels
            counts.append(np.bincount(labels.ravel(), minlength=self.n_labels))
        _write_levels(self.ann_writers, chunks)
        return counts


def _write_levels(writers: list[ShardWriter], chunks: dict[tuple[int, int], np.ndarray],
                  constants: dict[tuple[int, int], int] | None = None) -> None:
    """One shard of every level of a label pyramid from its level-0 tiles: a tile is one chunk at
    every level (sedm.tiling.store), so the shard's chunks keep their indices; constants stay constant."""
    for k, writer in enumerate(writers):
        if k:
            chunks = {index: downsample_labels(chunk) for index, chunk in chunks.items()}
        writer.write(chunks, constants=constants)
