"""``sedm tiling-summary``: one row per slide from the tile tables, for the report and for humans.

Everything comes from the tile tables themselves (rows plus the provenance each table carries in
its parquet metadata, see :mod:`sedm.tiling.table`), so the summary depends on exactly the files the
workflow declares as its inputs, and slides without tissue still get a row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sedm.atomic import write_text
from sedm.config import load_samples
from sedm.errors import InputError
from sedm.tiling.table import fraction_columns, read_table_metadata

SUMMARY_COLUMNS = ("slide_id", "patient_id", "role", "source_mpp", "target_mpp", "width", "height",
                   "n_tiles", "tissue_area_mm2")
"""Fixed columns; then ``mean_frac_unannotated`` and ``mean_frac_<class>``: the class fractions
averaged over the slide's tiles (empty for a slide without tiles). ``width``/``height`` are pixels at
``target_mpp``; ``tissue_area_mm2`` counts tissue pixels of the listed tiles."""


def summarise_table(path: str | Path) -> dict:
    """The summary row of one tile table (without the sample-sheet columns)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "tile table not found", "run `sedm tile` for the slide first")
    try:
        meta = read_table_metadata(path)
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise InputError(path, None, f"not a readable parquet file ({type(exc).__name__})",
                         "rerun `sedm tile` for the slide") from None
    if meta is None:
        raise InputError(path, None, "parquet file without sedm tiling metadata",
                         "pass tile tables written by `sedm tile`")
    mpp, tile = float(meta["mpp"]), int(meta["tile_size"])
    row = {
        "slide_id": meta["slide_id"],
        "source_mpp": float(meta["source_mpp"]),
        "target_mpp": mpp,
        "width": int(meta["width"]),
        "height": int(meta["height"]),
        "n_tiles": len(table),
        # tissue pixels = sum of per-tile fractions x tile area; x (µm/px)^2 -> µm^2; / 1e6 -> mm^2
        "tissue_area_mm2": float(table["tissue_fraction"].astype(np.float64).sum()) * tile * tile * mpp * mpp / 1e6,
    }
    for col in fraction_columns(list(meta["classes"])):
        row[f"mean_{col}"] = float(table[col].astype(np.float64).mean()) if len(table) else np.nan
    return row


def summarise(samples: pd.DataFrame, tables: list[str | Path]) -> pd.DataFrame:
    """One row per table, in sample-sheet order, with patient and role from ``samples``."""
    rows, seen = [], {}
    for path in tables:
        row = summarise_table(path)
        if row["slide_id"] in seen:
            raise InputError(path, "slide_id", f"slide {row['slide_id']!r} also comes from {seen[row['slide_id']]}",
                             "pass each slide's tile table once")
        seen[row["slide_id"]] = path
        if row["slide_id"] not in samples.index:
            raise InputError(path, "slide_id", f"slide {row['slide_id']!r} is not in the sample sheet",
                             "pass the sample sheet the tables were made from")
        sample = samples.loc[row["slide_id"]]
        rows.append({**row, "patient_id": sample["patient_id"], "role": sample["role"]})
    order = {s: i for i, s in enumerate(samples.index)}
    rows.sort(key=lambda r: order[r["slide_id"]])
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    extra = [c for c in df.columns if c not in SUMMARY_COLUMNS]
    return df[list(SUMMARY_COLUMNS) + extra]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="sample sheet (TSV)")
    parser.add_argument("--tables", nargs="+", required=True, help="tile tables written by `sedm tile`")
    parser.add_argument("--out", required=True, help="summary TSV to write")


def run(args: argparse.Namespace) -> int:
    summary = summarise(load_samples(args.samples), args.tables)
    write_text(args.out, summary.to_csv(sep="\t", index=False, float_format="%.6g"))
    return 0
