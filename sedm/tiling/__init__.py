"""The slide -> store layer: everything ``sedm tile`` and ``sedm tiling-summary`` do.

Modules in the order a slide flows through them:

* :mod:`~sedm.tiling.slides`: read a slide at a stated µm/px (openslide/tiffslide readers, a TIFF
  level decoded directly) and the one µm/px tolerance every stage compares with;
* :mod:`~sedm.tiling.tissue`: find tissue on a thumbnail;
* :mod:`~sedm.tiling.annotations`: load QuPath GeoJSON and rasterise it tile by tile;
* :mod:`~sedm.tiling.shards`: write whole Zarr v3 shards, one writer per shard;
* :mod:`~sedm.tiling.store`: the store's layout, how it is created and how later stages read it;
  :mod:`~sedm.tiling.table`: the tile table next to it;
* :mod:`~sedm.tiling.command`: ``sedm tile``; :mod:`~sedm.tiling.summary`: ``sedm tiling-summary``.

This file imports nothing, so reading a tile table does not import the tiler.
"""
