"""The tile table next to each store: its columns, where it lies, how it is built, written and read.

``<slide>.tiles.parquet`` lists the written tiles (:data:`TILE_COLUMNS`) and carries the slide's
provenance in its parquet metadata (:data:`TABLE_METADATA_KEY`), so ``sedm tiling-summary`` needs
nothing but the tables, and reads them without importing the tiler or zarr.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TILE_COLUMNS = ("slide_id", "row", "col", "y", "x", "tissue_fraction")
"""Fixed tile-table columns; then ``frac_unannotated`` and ``frac_<class>`` per class (they sum to 1).
``y``/``x`` are the tile's top-left pixel at the store's µm/px; ``row``/``col`` its chunk index."""

TABLE_METADATA_KEY = b"sedm"
"""Parquet key-value metadata of a tile table: the slide's provenance as JSON, so the summary needs
nothing but the tables (empty tables included)."""


def tile_table_path(store_path: str | Path) -> Path:
    """``<slide>.zarr`` -> ``<slide>.tiles.parquet`` (same folder)."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name.removesuffix(".zarr") + ".tiles.parquet")


def fraction_columns(classes: list[str]) -> list[str]:
    return ["frac_unannotated"] + [f"frac_{c}" for c in classes]


def empty_table(classes: Sequence[str]) -> pd.DataFrame:
    """A tile table with no rows and the right columns and dtypes."""
    cols: dict[str, Any] = {"slide_id": pd.Series([], dtype=str)}
    for c in TILE_COLUMNS[1:5]:
        cols[c] = pd.Series([], dtype=np.int32)
    for c in ["tissue_fraction", *fraction_columns(list(classes))]:
        cols[c] = pd.Series([], dtype=np.float32)
    return pd.DataFrame(cols)


def write_table(path: Path, table: pd.DataFrame, metadata: dict[str, Any]) -> None:
    """Write the tile table as parquet with the slide's provenance in the file's metadata."""
    tbl = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(tbl.schema.metadata or {})
    meta[TABLE_METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    pq.write_table(tbl.replace_schema_metadata(meta), path)


def read_table_metadata(path: str | Path) -> dict[str, Any] | None:
    """The provenance a tile table carries (see :data:`TABLE_METADATA_KEY`), or None."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(TABLE_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def build_table(results: list[tuple], slide_id: str, classes: list[str], tile_size: int) -> pd.DataFrame:
    """The tile table of the workers' (row, col, y, x, tissue pixels, label counts) tuples, in
    row-major order."""
    if not results:
        return empty_table(classes)
    results.sort(key=lambda r: (r[0], r[1]))
    area = float(tile_size * tile_size)
    arr = np.array([r[:5] for r in results], dtype=np.int64)
    fracs = np.stack([r[5] for r in results]).astype(np.float64) / area
    data: dict[str, Any] = {"slide_id": [slide_id] * len(results)}
    for i, c in enumerate(TILE_COLUMNS[1:5]):
        data[c] = arr[:, i].astype(np.int32)
    data["tissue_fraction"] = (arr[:, 4] / area).astype(np.float32)
    for i, c in enumerate(fraction_columns(classes)):
        data[c] = fracs[:, i].astype(np.float32)
    return pd.DataFrame(data)
