"""The per-slide Zarr v3 store: its layout, how it is created, and how later stages read it.

Layout of ``<results>/tiles/<slide>.zarr`` (OME-NGFF 0.5, so napari-ome-zarr opens it)::

    /                       group; attrs["ome"] multiscales + omero, attrs["sedm"] provenance
    /0, /1, ...             RGB image (c, y, x) uint8 at target µm/px, then downsampled 2x each
    /labels/annotation/0, /1, ...  (y, x) uint8 label mask, values as in sedm.labels (0 = unannotated),
                            one level per image level (every other pixel of the level above)
    /labels/tissue/0, /1, ...      (y, x) uint8, 1 = tissue, levels likewise

Shard files are named ``c.<i>.<j>...`` inside each array's folder (:data:`CHUNK_KEYS`).

Chunks (the unit a reader decodes) are tiles: level 0 arrays are chunked by ``tile_size``, level k
by ``tile_size / 2**k``, so every tile maps to exactly one chunk per array. Chunks are
grouped into shards (Zarr v3 ``sharding_indexed``, one file each) of up to :data:`SHARD_TILES`
tiles of one tile row: one file per tile and array made file creation the largest cost of tiling.
The tissue mask, which follows from the thumbnail alone and packs to almost nothing, is sharded in bands of
whole tile rows instead (:func:`tissue_shard_rows`). A shard is written by exactly one worker
(concurrent writes into one shard lose data, zarr-python #3682). Only tissue tiles are written;
unwritten chunks (and shards) read as the fill value (white glass, unannotated, no tissue).

Next to the store, ``<slide>.tiles.parquet`` lists the written tiles (see :data:`TILE_COLUMNS`).

pandas (and the tile table's module, which needs it and pyarrow) is imported by :meth:`SlideStore.tiles`
only: ``sedm style-stats``, a job per slide, reads pixels and never the table, and these imports cost
more than the rest of its start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from sedm import __version__, ome
from sedm.errors import InputError
from sedm.labels import class_values

if TYPE_CHECKING:
    import dask.array as da
    import pandas as pd

IMAGE_FILL = 255  # glass
SHARD_TILES = 128
"""Most tiles per shard (along x, within one tile row). Shards are written tile by tile
(:class:`sedm.tiling.shards.Shard`), so their size costs no memory; larger shards mean fewer files
(creating a file costs more than encoding a tile, and more still after many deletions on a file
system without journal) and a shard is also the unit of work, so a wide slide still gives every
thread many of them."""
SHARD_BYTES = 32 * 2**20
"""Most raw bytes of a level-0 image shard: large tiles get fewer tiles per shard, so no shard
file grows past what a reader or a copy tool handles in one piece."""
TISSUE_SHARD_CHUNKS = 1024
"""Most tiles per shard of the tissue mask. Its shards span whole tile rows (bands of
:func:`tissue_shard_rows` rows): nearly every chunk is constant (all tissue) and packs to a few
bytes, so a band costs one file where shards like the image's cost one per 32 tiles. The bound
keeps the shard index (16 bytes per chunk, read with every chunk) small."""
CHUNK_KEYS = {"name": "default", "separator": "."}
"""Shard files are named ``c.0.<row>.<col>`` side by side in one folder per array, not nested
``c/0/<row>/<col>``: each new folder is an inode the file system places apart (ext4 spreads
folders over block groups), and making a few of them per tile row per array cost a measurable
share of tiling throughput (benchmarks/tiling.py). Both separators are valid Zarr v3 and OME-Zarr
0.5 (RFC-2 allows every chunk key encoding); readers take it from ``zarr.json``."""

def compressor() -> BloscCodec:
    """Blosc lz4 (clevel 5) with byte shuffle: cheap enough that tiling is bound by JPEG decoding.

    Lossless codecs gain little on JPEG-decoded texture, while zstd encodes several times and
    decodes a few times slower than lz4 (nearly as slowly as the source JPEG), a cost every
    training epoch pays again; bitshuffle packs a little tighter at a large cost. lz4 still packs
    glass, label masks and constant masks well. Byte shuffle is a no-op for uint8 and packs float16
    arrays of other stages tighter, so one codec serves every dtype. README.md ("The per-slide
    store") has the measurements.
    """
    return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)


def tissue_shard_rows(rows: int, cols: int) -> int:
    """Tile rows per shard of the tissue mask of a ``rows`` x ``cols`` tile grid."""
    return max(1, min(rows, TISSUE_SHARD_CHUNKS // max(1, cols)))


def create_store(path: str | Path, *, slide_id: str, height: int, width: int, mpp: float,
                 tile_size: int, levels: int, classes: list[str], provenance: dict[str, Any],
                 shard_tiles: int | None = None) -> zarr.Group:
    """Create an empty store with all arrays and metadata; tiles are written into it afterwards.

    ``provenance`` is merged into ``attrs["sedm"]`` (source path, backend, source mpp, ...).
    A shard of the image levels and the annotation mask spans ``shard_tiles`` tiles of one tile row
    (default: as many as fit :data:`SHARD_BYTES`, at most :data:`SHARD_TILES`; never more than the
    tiles of a row); one of the tissue mask whole tile rows (:func:`tissue_shard_rows`).
    """
    if tile_size % 2 ** (levels - 1):
        raise InputError(None, "tiling.tile_size", f"{tile_size} is not divisible by 2^{levels - 1}",
                         "use a power-of-two tile size or fewer pyramid levels")
    if shard_tiles is None:
        shard_tiles = min(SHARD_TILES, SHARD_BYTES // (3 * tile_size * tile_size))
    n = max(1, min(shard_tiles, -(-width // tile_size)))
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for k in range(levels):
        t = tile_size // 2**k
        root.create_array(str(k), shape=(3, -(-height // 2**k), -(-width // 2**k)), chunks=(3, t, t),
                          shards=(3, t, n * t), dtype="uint8", fill_value=IMAGE_FILL, compressors=compressor(),
                          chunk_key_encoding=CHUNK_KEYS, dimension_names=("c", "y", "x"))
    labels = root.create_group("labels")
    values = class_values(classes)
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    label_values = {"annotation": ome.class_label_values(classes), "tissue": {1: ("tissue", ome.TISSUE_RGB)}}
    for name, label_value in label_values.items():
        grp = labels.create_group(name)
        tiles_high = 1 if name == "annotation" else tissue_shard_rows(rows, cols)
        tiles_wide = n if name == "annotation" else cols
        for k in range(levels):
            t = tile_size // 2**k
            grp.create_array(str(k), shape=(-(-height // 2**k), -(-width // 2**k)), chunks=(t, t),
                             shards=(tiles_high * t, tiles_wide * t), dtype="uint8", fill_value=0,
                             compressors=compressor(), chunk_key_encoding=CHUNK_KEYS, dimension_names=("y", "x"))
        grp.attrs["ome"] = ome.label_image(name, mpp, levels, label_value, source="../../")
    labels.attrs["ome"] = {"version": ome.VERSION, "labels": list(label_values)}
    root.attrs["ome"] = {
        "version": ome.VERSION,
        "multiscales": ome.multiscales(slide_id, mpp, levels, channel=True),
        "omero": {"channels": [{"label": c, "color": col, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                               for c, col in zip("RGB", ("FF0000", "00FF00", "0000FF"))], "rdefs": {"model": "color"}},
    }
    root.attrs["sedm"] = {"slide_id": slide_id, "mpp": mpp, "tile_size": tile_size, "levels": levels,
                          "classes": list(classes), "class_values": values, "unannotated_value": 0,
                          "sedm_version": __version__, **provenance}
    return root


class Level(NamedTuple):
    """One pyramid level of a store, lazily: µm/px first (as TIAToolbox states resolution), then the
    (y, x, 3) uint8 RGB dask array."""

    mpp: float
    image: "da.Array"


def lazy_array(array: zarr.Array, chunks: tuple[int, ...] | None = None) -> "da.Array":
    """``array`` as a dask array, one dask chunk per shard unless ``chunks`` says otherwise.

    A shard is one file and holds up to :data:`SHARD_TILES` tiles, so a whole-slide graph has tens of
    tasks per tile row instead of one per tile, while a chunk stays small enough that a few of them
    in memory bound what a computation over the whole slide holds. Untouched shards read as the fill
    value; zarr reads only the inner chunks a dask chunk covers.
    """
    import dask.array as da

    return da.from_zarr(array, chunks=chunks or array.shards or array.chunks)


@dataclass(frozen=True)
class SlideStore:
    """Read access to one tiled slide; cheap to construct, so each DataLoader worker opens its own.

    Besides windows read with ``read_*``, :meth:`pyramid`, :meth:`lazy`, :meth:`lazy_tissue` and
    :meth:`lazy_labels` give the whole slide as dask arrays (for notebooks and whole-slide statistics).
    """

    path: Path

    def __post_init__(self) -> None:
        path = Path(self.path)
        if not (path / "zarr.json").is_file():
            raise InputError(path, None, "not a sedm Zarr store", "run `sedm tile` on the slide first")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "_root", zarr.open_group(str(path), mode="r", zarr_format=3))
        object.__setattr__(self, "_arrays", {})

    def _array(self, name: str) -> zarr.Array:
        """The array at ``name``, opened once: opening reads its metadata, which costs about as much
        as reading a tile."""
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = self._root[name]
        return array

    @property
    def attrs(self) -> dict[str, Any]:
        """Provenance and geometry (``attrs["sedm"]``): slide_id, mpp, tile_size, classes, ..."""
        return dict(self._root.attrs["sedm"])

    @property
    def slide_id(self) -> str:
        return self.attrs["slide_id"]

    @property
    def mpp(self) -> float:
        """µm/px of level 0 of the store."""
        return float(self.attrs["mpp"])

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def tile_size(self) -> int:
        return int(self.attrs["tile_size"])

    @property
    def levels(self) -> int:
        """Pyramid levels of the image and of its label images (level k is at ``mpp * 2**k``)."""
        return int(self.attrs.get("levels", 1))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels at the store's µm/px."""
        return tuple(self._array("0").shape[1:])

    def read_image(self, y: int, x: int, h: int, w: int, level: int = 0) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the window at (y, x) in pixels of ``level`` (0 = store µm/px)."""
        return np.moveaxis(self._array(str(level))[:, y:y + h, x:x + w], 0, -1)

    def read_labels(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w) uint8 label values (sedm.labels) of the window at level 0."""
        return self._array("labels/annotation/0")[y:y + h, x:x + w]

    def read_tissue(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w) uint8 tissue mask (1 = tissue) of the window at level 0."""
        return self._array("labels/tissue/0")[y:y + h, x:x + w]

    def tiles(self) -> pd.DataFrame:
        """The tile table written next to the store."""
        import pandas as pd  # here, not at the top: see the module docstring

        from sedm.tiling.table import tile_table_path

        path = tile_table_path(self.path)
        if not path.is_file():
            raise InputError(path, None, f"the tile table of {self.path.name} is missing (it lists the tiles to read)",
                             f"keep {path.name} next to the store, as `sedm tile` writes them, or tile the slide again")
        return pd.read_parquet(path)

    def lazy(self, level: int = 0) -> Level:
        """Level ``level`` as a (y, x, 3) uint8 dask array, one chunk per shard, with its µm/px."""
        if not 0 <= level < self.levels:
            raise InputError(self.path, "level", f"level {level} is not in the store's 0..{self.levels - 1}",
                             "pass a level of the pyramid")
        image = lazy_array(self._array(str(level))).transpose(1, 2, 0)
        return Level(self.mpp * 2**level, image)

    def pyramid(self) -> list[Level]:
        """Every level, full resolution first."""
        return [self.lazy(k) for k in range(self.levels)]

    def written_shards(self, name: str = "0") -> list[tuple[int, ...]]:
        """Grid indices (sorted) of the shards of array ``name`` that exist as files; every other shard
        reads as the fill value (glass for the image), so a whole-slide pass can skip it unread."""
        prefix, sep = "c" + CHUNK_KEYS["separator"], CHUNK_KEYS["separator"]
        folder = self.path / name
        return sorted(tuple(int(v) for v in f.name[len(prefix):].split(sep)) for f in folder.iterdir()
                      if f.name.startswith(prefix)) if folder.is_dir() else []

    def _level0_chunks(self) -> tuple[int, int]:
        return tuple(self._array("0").shards[1:])

    def lazy_tissue(self) -> "da.Array":
        """(y, x) uint8 tissue mask (1 = tissue) at level 0, chunked like the level-0 image (not by its own
        row-band shards), so it lines up block for block with :meth:`lazy`."""
        return lazy_array(self._array("labels/tissue/0"), self._level0_chunks())

    def lazy_labels(self) -> "da.Array":
        """(y, x) uint8 annotation labels at level 0, chunked like the level-0 image."""
        return lazy_array(self._array("labels/annotation/0"), self._level0_chunks())


def open_checked(path: str | Path, classes: list[str], sample_ids: pd.Index | None = None) -> SlideStore:
    """Open a store and check it was tiled with ``classes`` (and belongs to the sample sheet)."""
    store = SlideStore(path)
    if store.classes != list(classes):
        raise InputError(store.path, "attrs.sedm.classes", f"classes {store.classes} differ from the config's "
                         f"{list(classes)}", "tile the slides with the current config")
    if sample_ids is not None and store.slide_id not in sample_ids:
        raise InputError(store.path, "slide_id", f"slide {store.slide_id!r} is not in the sample sheet",
                         "pass the sample sheet the stores were made from")
    return store
