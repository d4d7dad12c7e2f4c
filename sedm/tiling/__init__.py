"""The slide -> store layer: everything ``sedm tile`` and ``sedm tiling-summary`` do.

Modules in the order a slide flows through them:

* :mod:`~sedm.tiling.slides`: read a slide at a stated µm/px (openslide/tiffslide readers, a TIFF
  level decoded directly, and :func:`~sedm.tiling.slides.tile_reader` choosing between them) and
  the one µm/px tolerance every stage compares with (``MPP_RTOL``, ``same_mpp``);
* :mod:`~sedm.tiling.geometry`: the tile grid at the target µm/px, tissue per tile, 2x2 pyramid;
* :mod:`~sedm.tiling.tissue`: find tissue on a thumbnail;
* :mod:`~sedm.tiling.annotations`: load QuPath GeoJSON and rasterise it tile by tile;
* :mod:`~sedm.tiling.shards`: write whole Zarr v3 shards, one writer per shard;
* :mod:`~sedm.tiling.store`: the store's layout, how it is created and how later stages read it
  (``SlideStore``); :mod:`~sedm.tiling.table`: the tile table next to it;
* :mod:`~sedm.tiling.blocks`: units of work (one shard each) and ``BlockTiler``, which does them;
  :mod:`~sedm.tiling.workers`: the thread / forked-process pool that runs them;
* :mod:`~sedm.tiling.command`: ``sedm tile``; :mod:`~sedm.tiling.summary`: ``sedm tiling-summary``.

This file imports nothing, so reading a tile table does not import the tiler.
"""
