"""The per-slide Zarr v3 store: its layout, how it is created, and how later stages read it.

Layout of ``<results>/tiles/<slide>.zarr`` (OME-NGFF 0.5, so napari-ome-zarr opens it)::

    /                       group; attrs["ome"] multiscales + omero, attrs["sedm"] provenance
    /0, /1, ...             RGB image (c, y, x) uint8 at target µm/px, then downsampled 2x each
    /labels/annotation/0    (y, x) uint8 label mask, values as in sedm.labels (0 = unannotated)
    /labels/tissue/0        (y, x) uint8, 1 = tissue

Level 0 arrays are chunked by tile (``tile_size``); level k of the image by ``tile_size / 2**k``,
so every tile maps to exactly one chunk per level and tiles can be written by parallel workers
without two writers touching one chunk. Only tissue tiles are written; unwritten chunks read as
the fill value (white glass, unannotated, no tissue).

Next to the store, ``<slide>.tiles.parquet`` lists the written tiles (see :data:`TILE_COLUMNS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from sedm import __version__
from sedm.errors import InputError
from sedm.labels import class_values

IMAGE_FILL = 255  # glass
TILE_COLUMNS = ("slide_id", "row", "col", "y", "x", "tissue_fraction")
"""Fixed tile-table columns; then ``frac_unannotated`` and ``frac_<class>`` per class (they sum to 1).
``y``/``x`` are the tile's top-left pixel at the store's µm/px; ``row``/``col`` its chunk index."""

_COLORS = [(230, 60, 60), (60, 160, 230), (240, 200, 40), (120, 200, 90), (180, 90, 200),
           (255, 140, 0), (0, 200, 180), (150, 150, 150)]


def compressor() -> BloscCodec:
    """Fast lossless codec for tiles: zstd level 1 decodes ~as fast as lz4 and packs tighter."""
    return BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.bitshuffle)


def tile_table_path(store_path: str | Path) -> Path:
    """``<slide>.zarr`` -> ``<slide>.tiles.parquet`` (same folder)."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name.removesuffix(".zarr") + ".tiles.parquet")


def fraction_columns(classes: list[str]) -> list[str]:
    return ["frac_unannotated"] + [f"frac_{c}" for c in classes]


def _scale(mpp: float, level: int, channel: bool) -> dict:
    s = mpp * 2**level
    return {"type": "scale", "scale": ([1.0] if channel else []) + [s, s]}


def _axes(channel: bool) -> list[dict]:
    axes = [{"name": "c", "type": "channel"}] if channel else []
    return axes + [{"name": n, "type": "space", "unit": "micrometer"} for n in ("y", "x")]


def create_store(path: str | Path, *, slide_id: str, height: int, width: int, mpp: float,
                 tile_size: int, levels: int, classes: list[str], provenance: dict[str, Any]) -> zarr.Group:
    """Create an empty store with all arrays and metadata; tiles are written into it afterwards.

    ``provenance`` is merged into ``attrs["sedm"]`` (source path, backend, source mpp, ...).
    """
    if tile_size % 2 ** (levels - 1):
        raise InputError(None, "tiling.tile_size", f"{tile_size} is not divisible by 2^{levels - 1}",
                         "use a power-of-two tile size or fewer pyramid levels")
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for k in range(levels):
        t = tile_size // 2**k
        root.create_array(str(k), shape=(3, -(-height // 2**k), -(-width // 2**k)), chunks=(3, t, t),
                          dtype="uint8", fill_value=IMAGE_FILL, compressors=compressor(),
                          dimension_names=("c", "y", "x"))
    labels = root.create_group("labels")
    values = class_values(classes)
    for name in ("annotation", "tissue"):
        grp = labels.create_group(name)
        grp.create_array("0", shape=(height, width), chunks=(tile_size, tile_size), dtype="uint8",
                         fill_value=0, compressors=compressor(), dimension_names=("y", "x"))
        if name == "annotation":
            colors = [{"label-value": v, "rgba": [*_COLORS[(v - 1) % len(_COLORS)], 255]} for v in values.values()]
            props = [{"label-value": v, "class": c} for c, v in values.items()]
        else:
            colors, props = [{"label-value": 1, "rgba": [0, 255, 0, 255]}], [{"label-value": 1, "class": "tissue"}]
        grp.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"name": name, "axes": _axes(False),
                             "datasets": [{"path": "0", "coordinateTransformations": [_scale(mpp, 0, False)]}]}],
            "image-label": {"version": "0.5", "colors": colors, "properties": props,
                            "source": {"image": "../../"}},
        }
    labels.attrs["ome"] = {"version": "0.5", "labels": ["annotation", "tissue"]}
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"name": slide_id, "axes": _axes(True),
                         "datasets": [{"path": str(k), "coordinateTransformations": [_scale(mpp, k, True)]}
                                      for k in range(levels)]}],
        "omero": {"channels": [{"label": c, "color": col, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                               for c, col in zip("RGB", ("FF0000", "00FF00", "0000FF"))], "rdefs": {"model": "color"}},
    }
    root.attrs["sedm"] = {"slide_id": slide_id, "mpp": mpp, "tile_size": tile_size, "levels": levels,
                          "classes": list(classes), "class_values": values, "unannotated_value": 0,
                          "sedm_version": __version__, **provenance}
    return root


@dataclass(frozen=True)
class SlideStore:
    """Read access to one tiled slide; cheap to construct, so each DataLoader worker opens its own."""

    path: Path

    def __post_init__(self) -> None:
        path = Path(self.path)
        if not (path / "zarr.json").is_file():
            raise InputError(path, None, "not a sedm Zarr store", "run `sedm tile` on the slide first")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "_root", zarr.open_group(str(path), mode="r", zarr_format=3))

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
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels at the store's µm/px."""
        return tuple(self._root["0"].shape[1:])

    def read_image(self, y: int, x: int, h: int, w: int, level: int = 0) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the window at (y, x) in pixels of ``level`` (0 = store µm/px)."""
        return np.moveaxis(self._root[str(level)][:, y:y + h, x:x + w], 0, -1)

    def read_labels(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w) uint8 label values (sedm.labels) of the window at level 0."""
        return self._root["labels/annotation/0"][y:y + h, x:x + w]

    def read_tissue(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w) uint8 tissue mask (1 = tissue) of the window at level 0."""
        return self._root["labels/tissue/0"][y:y + h, x:x + w]

    def tiles(self) -> pd.DataFrame:
        """The tile table written next to the store."""
        return pd.read_parquet(tile_table_path(self.path))
