"""``sedm tile``: one slide -> a Zarr v3 store (sedm.tiling.store layout) plus its tile table.

Why it is built the way it is:

* Every input is checked (config, slide, GeoJSON, geometry) before a single tile is read, so a bad
  input costs seconds, not the runtime of a half-tiled slide.
* Tissue is found once on a thumbnail; the per-tile tissue fraction follows exactly from that mask
  (nearest upsampling), so the table, the stored tissue mask and the tile selection agree.
* The store is padded to whole tiles: every listed tile reads back as a full ``tile_size`` square
  (padding is glass: white, unannotated, no tissue), and each tile owns exactly one chunk per array.
* A unit of work is one shard (up to :data:`sedm.tiling.store.SHARD_TILES` tiles of a tile row): its
  worker decodes the shard's tissue tiles one by one, builds each tile's pyramid and appends every
  level to its shard file at once (:class:`sedm.tiling.shards.Shard`), so it holds one tile at a
  time, then writes the shard's labels. One writer per shard (zarr-python #3682 loses data
  otherwise), few files (file creation cost more than encoding with one file per tile), and no
  zarr per-call overhead (see :mod:`sedm.tiling.shards`). The tissue mask, known from the
  thumbnail alone, is written in bands of whole tile rows, each its own unit of work.
* Pixels of whole tissue tiles are stored unpacked (lz4 gains next to nothing on decoded texture,
  for a noticeable share of the tiling time); tiles with glass in them are packed.
* When the target µm/px is a pyramid level of a tiled TIFF, tiles are decoded straight from the
  file (no resampling, no RGBA round trip); otherwise the slide backend resamples.
* Shards are handed to the workers with a bounded number in flight, so peak memory depends on the
  tile size and worker count (and the thumbnail), never on the number of tiles. Several workers are
  forked processes where that is safe (Linux, a TIFF level decoded directly, direct shard writes):
  as threads they spend CPU on GIL hand-offs and keep fewer cores busy
  (:func:`sedm.tiling.workers._pool`). Otherwise, threads.
* The store's metadata is made while the thumbnail is searched for tissue, and the QC image drawn
  alongside the first tiles; garbage collection skips the objects that exist before the tile loop
  (:func:`sedm.tiling.workers.frozen_gc`).
* Outputs go through :func:`sedm.atomic.atomic_path`: a failure leaves no store, table or QC image.

Where the time goes (JPEG decode, the pyramid, file writes, interpreter work) is measured by
``benchmarks/tiling.py``; README.md keeps the figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from sedm.atomic import atomic_path, write_bytes
from sedm.config import check_pyramid, load_config
from sedm.errors import InputError
from sedm.tiling.blocks import BlockTiler, shard_blocks, with_tissue_bands
from sedm.tiling.geometry import Grid, nearest_index, target_extent, tile_tissue_counts
from sedm.tiling.shards import ShardWriter
from sedm.tiling.slides import matching_level, open_slide, tile_reader
from sedm.tiling.store import create_store
from sedm.tiling.table import build_table, write_table
from sedm.tiling.workers import can_fork_workers, frozen_gc, keep_freed_memory, run_bounded

log = logging.getLogger(__name__)


@dataclass
class TilingResult:
    """What :func:`tile_slide` produced: the tile table and the store's provenance attrs."""

    table: pd.DataFrame
    provenance: dict[str, Any]
    fast_read: bool = False
    direct_write: bool = False
    processes: bool = False
    """whether the tiles were made by forked worker processes (else threads)"""


def tile_slide(slide_path: str | Path, *, slide_id: str, config: dict[str, Any], out: str | Path,
               table: str | Path, qc: str | Path, annotation: str | Path | None = None,
               threads: int | None = None, progress: bool = True, processes: bool | None = None) -> TilingResult:
    """Tile one slide into ``out`` (Zarr v3, sedm.tiling.store layout), ``table`` (parquet) and ``qc`` (PNG).

    ``config`` is a validated sedm config (sections classes, class_map, slides, tissue, tiling). ``processes``:
    whether the ``threads`` workers are forked processes; None (default) picks them where they are
    safe and faster: more than one worker, Linux, the slide level decoded directly (no slide
    library handle in the workers) and every shard written directly.
    Raises :class:`InputError` before any output exists if an input is unusable.
    """
    keep_freed_memory()
    classes = list(config["classes"])
    scfg, tcfg, tiling = config["slides"], config["tissue"], config["tiling"]
    target_mpp = float(tiling["mpp"])
    tile_size = int(tiling["tile_size"])
    levels = int(tiling["pyramid_levels"])
    min_fraction = float(tiling["min_tissue_fraction"])
    min_annotated = float(tiling["min_annotated_tissue"])
    min_on_tissue = float(tiling["min_annotation_on_tissue"])
    threads = int(tiling["threads"] if threads is None else threads)
    thumb_mpp = float(tcfg["thumbnail_mpp"])
    out, table, qc = Path(out), Path(table), Path(qc)
    slide_path = Path(slide_path)

    # ---- validation: nothing is computed before every input is known to be usable
    check_pyramid(config)
    if threads < 1:
        raise InputError(None, "--threads", f"{threads} threads", "use at least 1")
    annotations: list = []
    if annotation is not None:
        from sedm.tiling.annotations import load_geojson

        annotation = Path(annotation)
        annotations = list(load_geojson(annotation, classes, config["class_map"]))
    slide = open_slide(slide_path, backend=scfg["backend"], mpp_override=scfg["mpp_override"])
    try:
        return _tile_open_slide(slide, slide_path=slide_path, slide_id=slide_id, classes=classes,
                                annotations=annotations, annotation=annotation, target_mpp=target_mpp,
                                tile_size=tile_size, levels=levels, min_fraction=min_fraction,
                                min_annotated=min_annotated, min_on_tissue=min_on_tissue, threads=threads, thumb_mpp=thumb_mpp, tcfg=tcfg,
                                scfg=scfg, out=out, table=table, qc=qc, progress=progress, processes=processes)
    finally:
        slide.close()


def slide_grid(slide: Any, slide_path: Path, target_mpp: float, tile_size: int,
               levels: int) -> tuple[Grid, int | None, float]:
    """The slide's tile grid at ``target_mpp``, the slide level read as it is (None: resampled) and the
    µm/px of its pixels. Raises :class:`InputError` when the slide cannot hold ``levels`` pyramid levels."""
    level = matching_level(slide, target_mpp)
    if level is not None:  # the reader returns this level's pixels as they are: use its exact geometry
        width, height = (int(v) for v in slide.level_dimensions[level])
        pixel_mpp = float(slide.level_mpp(level))
    else:
        height, width = target_extent(tuple(slide.dimensions), float(slide.mpp), target_mpp)
        pixel_mpp = target_mpp
    if height < 1 or width < 1:
        raise InputError(slide_path, "tiling.mpp", f"the slide is smaller than one pixel at {target_mpp} µm/px",
                         "use a smaller tiling.mpp")
    grid = Grid(height, width, tile_size)
    if levels > grid.max_levels:
        raise InputError(slide_path, "tiling.pyramid_levels",
                         f"{levels} levels, but the slide ({width} x {height} px at {target_mpp} µm/px) fits in one "
                         f"{tile_size} px tile after {grid.max_levels} level(s)",
                         f"set tiling.pyramid_levels to {grid.max_levels} or less")
    return grid, level, pixel_mpp


def check_slide(slide_path: str | Path, config: dict[str, Any]) -> None:
    """Open a slide and check it against the tiling config, as :func:`tile_slide` does before any tile."""
    scfg, tiling = config["slides"], config["tiling"]
    slide = open_slide(slide_path, backend=scfg["backend"], mpp_override=scfg["mpp_override"])
    try:
        slide_grid(slide, Path(slide_path), float(tiling["mpp"]), int(tiling["tile_size"]),
                   int(tiling["pyramid_levels"]))
    finally:
        slide.close()


def _tile_open_slide(slide: Any, *, slide_path: Path, slide_id: str, classes: list[str], annotations: list,
                     annotation: Path | None, target_mpp: float, tile_size: int, levels: int,
                     min_fraction: float, min_annotated: float, min_on_tissue: float, threads: int, thumb_mpp: float, tcfg: dict,
                     scfg: dict, out: Path, table: Path, qc: Path, progress: bool,
                     processes: bool | None) -> TilingResult:
    from sedm.tiling.tissue import detect_tissue, tissue_qc_png

    source_mpp = float(slide.mpp)
    grid, level, pixel_mpp = slide_grid(slide, slide_path, target_mpp, tile_size, levels)
    height, width = grid.height, grid.width
    if level is None and target_mpp < source_mpp:
        log.warning("%s: target %.4g µm/px is finer than the slide's %.4g µm/px; tiles are upsampled",
                    slide_path, target_mpp, source_mpp)

    provenance = {
        "source": str(slide_path.resolve()),
        "annotation": None if annotation is None else str(Path(annotation).resolve()),
        "has_annotations": annotation is not None,
        "backend": slide.backend,
        "source_mpp": source_mpp,
        "source_dimensions": [int(v) for v in slide.dimensions],
        "target_mpp": target_mpp,
        "source_level": level,
        "height": height,
        "width": width,
        "thumbnail_mpp": thumb_mpp,
        "tissue": {"min_object_um2": float(tcfg["min_object_um2"]), "min_hole_um2": float(tcfg["min_hole_um2"])},
        "min_tissue_fraction": min_fraction,
    }

    # ---- outputs (temporaries, renamed only when everything succeeded). The store's arrays are
    # made (zarr metadata) while the thumbnail is read and searched for tissue, and the QC
    # image is drawn alongside the first tiles: seconds a core would otherwise idle.
    with atomic_path(out) as tmp_store, atomic_path(table) as tmp_table, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sedm-tile-setup") as setup:
        made = setup.submit(create_store, tmp_store, slide_id=slide_id, height=grid.padded_height,
                            width=grid.padded_width, mpp=target_mpp, tile_size=tile_size, levels=levels,
                            classes=classes, provenance=dict(provenance))

        # ---- tissue mask on a thumbnail at thumbnail_mpp µm/px
        thumb = np.asarray(slide.thumbnail(thumb_mpp))[..., :3]
        mask = np.asarray(detect_tissue(thumb, thumb_mpp, min_object_um2=float(tcfg["min_object_um2"]),
                                        min_hole_um2=float(tcfg["min_hole_um2"])), dtype=bool)
        qc_png = setup.submit(tissue_qc_png, thumb, mask)
        if annotations:
            from sedm.tiling.annotations import check_fit

            share = check_fit(annotation, annotations, classes, tuple(slide.dimensions), mask, source_mpp / thumb_mpp,
                              min_annotated, min_on_tissue)
            log.info("%s: the annotations cover %.1f%% of the tissue", slide_id, 100 * share)
        iy = nearest_index(height, pixel_mpp, thumb_mpp, mask.shape[0])
        ix = nearest_index(width, pixel_mpp, thumb_mpp, mask.shape[1])
        counts = tile_tissue_counts(mask, iy, ix, tile_size, grid.rows, grid.cols)
        area = tile_size * tile_size
        keep = (counts > 0) & (counts >= min_fraction * area)
        cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(keep))]  # row-major order
        if not cells:
            log.warning("%s: no tile has tissue (fraction >= %g); writing an empty store and tile table",
                        slide_path, min_fraction)
        root = made.result()
        provenance["n_tiles"] = len(cells)
        root.attrs["sedm"] = {**root.attrs["sedm"], "n_tiles": len(cells)}

        writers = [ShardWriter(root[str(k)], tmp_store) for k in range(levels)]
        ann_writers = [ShardWriter(root[f"labels/annotation/{k}"], tmp_store) for k in range(levels)]
        tissue_writers = [ShardWriter(root[f"labels/tissue/{k}"], tmp_store) for k in range(levels)]
        source, fast = tile_reader(slide, slide_path, scfg, target_mpp, level, cells, tile_size)
        try:
            tiler = BlockTiler(grid=grid, source=source, mask=mask, counts=counts, iy=iy, ix=ix,
                               annotations=annotations, classes=classes, scale=source_mpp / pixel_mpp,
                               writers=writers, ann_writers=ann_writers, tissue_writers=tissue_writers)
            direct = all(w.direct for w in (*writers, *ann_writers, *tissue_writers))
            if processes is None:
                processes = threads > 1 and fast and direct and can_fork_workers()
            elif processes and not (fast and direct and can_fork_workers()):
                raise ValueError("worker processes need a directly decoded TIFF level, direct shard writes and fork")
            rows, processes = _write_tiles(cells, tiler=tiler, shard_tiles=writers[0].per_shard[-1],
                                           threads=threads, progress=progress, slide_id=slide_id,
                                           processes=processes)
        finally:
            source.close()
        table_meta = {"slide_id": slide_id, "tile_size": tile_size, "classes": classes, "mpp": target_mpp,
                      **provenance}
        write_table(tmp_table, rows, table_meta)
        write_bytes(qc, qc_png.result())  # atomic itself; written last, so only on success
    log.info("%s: %d tiles of %d px at %g µm/px -> %s", slide_id, len(cells), tile_size, target_mpp, out)
    return TilingResult(rows, provenance, fast_read=fast, direct_write=writers[0].direct, processes=processes)


def _write_tiles(cells: list[tuple[int, int]], *, tiler: BlockTiler, shard_tiles: int, threads: int,
                 progress: bool, slide_id: str, processes: bool = False) -> tuple[pd.DataFrame, bool]:
    """Tile every cell, one shard per unit of work; returns the tile table and whether the workers
    were processes."""
    results: list[tuple] = []
    bar = tqdm(total=len(cells), unit="tile", desc=f"tiling {slide_id}", file=sys.stderr,
               disable=not progress, mininterval=1.0)

    def collect(block_result: list[tuple]) -> None:
        results.extend(block_result)
        bar.update(len(block_result))

    band_rows = tiler.tissue_writers[0].per_shard[0]
    try:
        with frozen_gc():
            processes = run_bounded(tiler, with_tissue_bands(shard_blocks(cells, shard_tiles), cells, band_rows),
                                     threads, collect, processes=processes)
    finally:
        bar.close()
    return build_table(results, slide_id, tiler.classes, tiler.grid.tile_size), processes


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="sedm config (YAML/JSON; sections classes, slides, "
                                                        "tissue, tiling)")
    parser.add_argument("--slide-id", required=True, help="slide identifier (sample sheet slide_id)")
    parser.add_argument("--slide", required=True, help="whole-slide image (any openslide/tiffslide format)")
    parser.add_argument("--annotation", help="QuPath GeoJSON export with the slide's annotations")
    parser.add_argument("--threads", type=int,
                        help="workers, one core each: forked processes on Linux when a TIFF level is decoded "
                             "directly, else threads (default: tiling.threads)")
    parser.add_argument("--out", required=True, help="Zarr v3 store to write (<slide>.zarr)")
    parser.add_argument("--table", required=True, help="tile table to write (<slide>.tiles.parquet)")
    parser.add_argument("--qc", required=True, help="tissue-mask QC image to write (PNG)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tile_slide(args.slide, slide_id=args.slide_id, config=config, out=args.out, table=args.table, qc=args.qc,
               annotation=args.annotation, threads=args.threads, progress=not args.no_progress)
    return 0
