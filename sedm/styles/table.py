"""``sedm style-table``: the cohort table of styles, one row per slide and per synthetic set.

Columns: identity (:data:`sedm.styles.space.SLIDE_ID`, ...), tissue pixels, the stain features of
:mod:`sedm.styles.features` and, once the diffusion model exists, the mean style vector and its spread
(:mod:`sedm.styles.embedding`). The evaluation and the report read it through
:mod:`sedm.styles.space`.

Synthetic rows also get, per style space they have features in, ``<space>_to_source`` and
``<space>_source_to_labelled`` (:func:`sedm.styles.space.synthetic_offsets`), and every row a
``flags`` column (:mod:`sedm.flags`; empty when nothing is doubtful), each flag also logged at WARNING.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sedm.atomic import atomic_path
from sedm.config import load_samples
from sedm.errors import InputError
from sedm.flags import FLAGS, cell, warn
from sedm.styles.space import (KIND, REAL, SLIDE_ID, SOURCE_TO_LABELLED, SPACES, SYNTHETIC, TO_SOURCE, cohort_table,
                               fit_space, synthetic_offsets)

log = logging.getLogger(__name__)


def _read(paths: list[Path], samples: pd.DataFrame, option: str, kind: str | None) -> list[dict[str, Any]]:
    out, seen = [], set()
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(path, option, f"not readable as JSON ({exc})", "rerun the rule that writes it") from None
        slide = data.get("slide_id") if isinstance(data, dict) else None
        if slide not in samples.index:
            raise InputError(path, "slide_id", f"slide {slide!r} is not in the sample sheet",
                             "pass the statistics of the sample sheet's slides")
        if kind is not None and data.get("kind") != kind:
            raise InputError(path, "kind", f"{data.get('kind')!r} statistics passed to {option}",
                             f"pass the statistics of {'slide' if kind == REAL else 'synthetic'} stores here")
        if slide in seen:
            raise InputError(path, "slide_id", f"slide {slide!r} passed twice to {option}", "pass each slide once")
        seen.add(slide)
        out.append(data)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, type=Path, help="sample sheet (patient and role of each slide)")
    parser.add_argument("--stats", nargs="+", required=True, type=Path, help="per-slide JSON of `sedm style-stats`")
    parser.add_argument("--synthetic", nargs="*", default=[], type=Path,
                        help="`sedm style-stats` JSON of synthetic stores")
    parser.add_argument("--embeddings", nargs="*", default=[], type=Path,
                        help="per-slide JSON of `sedm style-embedding`")
    parser.add_argument("--out", required=True, type=Path, help="TSV of the cohort table")


def with_offsets(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each synthetic set's offsets from its source and the flags (module docstring);
    the flags are logged at WARNING, one line per synthetic set and flag."""
    table = table.copy()
    flags: dict[str, list[str]] = {}
    synthetic = (table[KIND] == SYNTHETIC).to_numpy()
    for name in SPACES:
        space = fit_space(table, name)
        if space is None:
            continue
        offsets = synthetic_offsets(table, space)
        if not len(offsets):
            continue
        for col in (TO_SOURCE, SOURCE_TO_LABELLED):
            table[f"{name}_{col}"] = np.where(synthetic, table[SLIDE_ID].map(offsets[col]), np.nan)
        for slide, its in offsets[FLAGS].items():
            flags.setdefault(slide, []).extend(its)
    table[FLAGS] = [cell(warn(log, flags.get(slide, []))) if syn else ""
                    for slide, syn in zip(table[SLIDE_ID], synthetic)]
    return table


def run(args: argparse.Namespace) -> int:
    samples = load_samples(args.samples)
    table = cohort_table(samples, _read(args.stats, samples, "--stats", REAL),
                         _read(args.synthetic, samples, "--synthetic", SYNTHETIC),
                         _read(args.embeddings, samples, "--embeddings", None))
    table = with_offsets(table)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("style table: %d slides, %d synthetic sets", (table["kind"] == REAL).sum(),
             (table["kind"] == SYNTHETIC).sum())
    return 0
