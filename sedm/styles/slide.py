"""Whole-slide stain statistics with dask over a store, and ``sedm style-stats``.

The level-0 image and the tissue mask are read as dask arrays chunked by image shard
(:meth:`sedm.tiling.store.SlideStore.lazy`): one task per written shard reads it, turns it into the sums
of :mod:`sedm.styles.features` and drops the pixels, and dask adds the sums in a tree. Memory is a
few shards per thread whatever the slide size, the graph has a task per shard (not per tile), and
the threaded scheduler runs the blocks in parallel (decoding and numpy release the GIL). A synthetic
store (``sedm synthesize``: ``images`` (N, h, w, 3), no mask) goes through the same sums, a sample
being a tile, so the report compares synthetic sets and slides in one feature space.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from sedm.atomic import write_text
from sedm.errors import InputError
from sedm.styles.features import N_SUMS, block_sums, features, summarise
from sedm.tiling.store import SlideStore, lazy_array

log = logging.getLogger(__name__)


def _block(rgb: np.ndarray, tissue: np.ndarray, tile: int) -> np.ndarray:
    return block_sums(rgb, tissue[..., 0].astype(bool), tile)[None, None]


def _sample_block(images: np.ndarray) -> np.ndarray:
    out = np.zeros(N_SUMS)
    for img in images:
        out += block_sums(img, None, max(img.shape[:2]))
    return out[None]


def slide_sums(store: SlideStore) -> "Any":
    """Lazy (N_SUMS,) sums over the tissue of the store's level 0 (call ``compute``).

    Only shards written to disk become tasks: an unwritten image shard reads as glass (the fill
    value, never a tissue pixel), so it adds exactly nothing, and a mostly empty slide costs what its
    tissue costs.
    """
    import dask.array as da

    image = store.lazy(0).image
    tissue = store.lazy_tissue()[..., None]
    parts = [da.map_blocks(_block, image.blocks[i, j], tissue.blocks[i, j], tile=store.tile_size, dtype=np.float64,
                           chunks=((1,), (1,), (N_SUMS,)), meta=np.empty((0, 0, 0)))
             for _, i, j in store.written_shards("0")]
    if not parts:
        return da.zeros(N_SUMS, chunks=N_SUMS)
    return da.concatenate(parts, axis=0).sum(axis=(0, 1))


def synthetic_sums(path: Path) -> "Any":
    """Lazy sums over the samples of a synthetic store, one dask chunk per zarr shard (or chunk)."""
    import dask.array as da

    images = lazy_array(zarr.open_group(str(path), mode="r", zarr_format=3)["images"])
    images = images.rechunk({1: -1, 2: -1, 3: -1})
    parts = da.map_blocks(_sample_block, images, dtype=np.float64, drop_axis=(2, 3), chunks=((1,) * images.numblocks[0],
                          (N_SUMS,)), meta=np.empty((0, 0)))
    return parts.sum(axis=0)


def _kind(path: Path) -> str:
    if not (path / "zarr.json").is_file():
        raise InputError(path, None, "not a Zarr store", "pass a store written by `sedm tile` or `sedm synthesize`")
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    if "images" in root and "slide_id" in root.attrs.get("sedm", {}):
        return "synthetic"
    if "0" in root and "labels" in root:
        return "slide"
    raise InputError(path, "arrays", "neither a slide store (0, labels/tissue/0) nor a synthetic store (images)",
                     "pass a store written by `sedm tile` or `sedm synthesize`")


def style_stats(path: str | Path, threads: int = 1) -> dict[str, Any]:
    """The per-slide (or per-synthetic-set) stain statistics of the store at ``path``."""
    import dask

    path = Path(path)
    kind = _kind(path)
    if kind == "slide":
        store = SlideStore(path)
        lazy, slide_id = slide_sums(store), store.slide_id
        extra = {"mpp": store.mpp, "shape": list(store.shape), "tissue_mm2": None}
    else:
        attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs["sedm"])
        lazy, slide_id = synthetic_sums(path), attrs["slide_id"]
        extra = {"mpp": attrs.get("mpp")}
    # one BLAS thread per dask thread: the matrix products of a block are small, and BLAS threads
    # on top of dask's would ask for threads x cores threads
    with threadpool_limits(limits=1 if threads > 1 else None, user_api="blas"):
        (sums,) = dask.compute(lazy, scheduler="threads", num_workers=max(1, int(threads)))
    stats = summarise(np.asarray(sums))
    if kind == "slide":
        extra["tissue_mm2"] = stats["tissue_pixels"] * (extra["mpp"] * 1e-3) ** 2
    feats = {k: v if math.isfinite(v) else None for k, v in features(stats).items()}
    return {"slide_id": slide_id, "kind": kind, "store": str(path), **extra, **stats, "features": feats}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, type=Path, help="slide store (sedm tile) or synthetic store")
    parser.add_argument("--out", required=True, type=Path, help="JSON file of the statistics")
    parser.add_argument("--threads", type=int, default=1, help="dask threads (blocks read and reduced in parallel)")


def run(args: argparse.Namespace) -> int:
    stats = style_stats(args.store, threads=args.threads)
    write_text(args.out, json.dumps(stats, indent=2, allow_nan=False) + "\n")
    log.info("%s (%s): %d tissue pixels, mean OD %s", stats["slide_id"], stats["kind"], stats["tissue_pixels"],
             stats["od_mean"])
    return 0
