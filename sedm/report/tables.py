"""What every report section is built from: figures, tables, cell formatting and tolerant readers.

Readers return None for absent or unreadable files (logged, never raised), so a partial pipeline gives
a partial report instead of an error. Strings end up in the page only through the autoescaping
template (:func:`sedm.report.build.environment`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 1400
"""Longest side (px) of an embedded image; larger ones are downscaled to bound the HTML size."""


@dataclass
class Figure:
    """One image of the report: embedded as a data URI and also written to the figures folder."""

    section: str
    name: str
    png: bytes
    caption: str = ""

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: integers as integers, floats with ``digits`` decimals, NaN/None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def fmt_p(value: Any) -> str:
    """A p-value: three significant digits, scientific below 0.001."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        return fmt(value)
    if math.isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


def frame_table(df: pd.DataFrame, digits: int = 3) -> Table:
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rows = [[fmt(v, digits) for v in row] for row in df.itertuples(index=False, name=None)]
    return Table([str(c) for c in df.columns], rows, numeric)


def read_table(path: Path) -> pd.DataFrame | None:
    """A TSV/CSV/Parquet table, or None when absent or unreadable (logged, never raised)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.suffix in (".tsv", ".txt") else ","
        return pd.read_csv(path, sep=sep)
    except Exception as exc:  # a broken stage output must not take the whole report down
        log.warning("could not read %s: %s", path, exc)
        return None


BENCHMARK_COLUMNS = {"s": "mean", "max_rss": "max", "cpu_time": "mean", "mean_load": "mean"}
"""Columns of a Snakemake benchmark file the report reads, and how repeats (``benchmark: repeat(...)``)
are combined: ``s`` is the job's wall time in seconds, ``cpu_time`` its CPU seconds, ``max_rss`` MB."""


def read_benchmark(path: Path) -> dict[str, float] | None:
    """One job's Snakemake benchmark file as {column: value} for :data:`BENCHMARK_COLUMNS` (NaN where a
    column is absent or "NA"/"-", as for jobs too short to measure); None when absent or empty."""
    df = read_table(path)
    if df is None or not len(df):
        return None
    out = {}
    for col, how in BENCHMARK_COLUMNS.items():
        vals = pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series([np.nan])
        out[col] = float(getattr(vals, how)())
    return out


def first_table(paths: Iterable[Path]) -> tuple[pd.DataFrame | None, Path | None]:
    for path in paths:
        df = read_table(path)
        if df is not None:
            return df, path
    return None, None


def read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("could not read %s: %s", path, exc)
        return None


def png_bytes(path: Path, max_side: int = MAX_IMAGE_SIDE) -> bytes | None:
    """The image at ``path`` as PNG bytes, downscaled to ``max_side``; None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            img.load()
            if img.format == "PNG" and max(img.size) <= max_side:
                return path.read_bytes()
            img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        log.warning("could not read image %s: %s", path, exc)
        return None


def not_run(missing: Sequence[Path | str], **extra: Any) -> dict:
    """A section whose inputs are absent: the template says "not run" and lists what was looked for."""
    return {"ran": False, "missing": [str(m) for m in missing], **extra}


def natural_key(text: str) -> list:
    """Sort key that puts P2 before P10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]
