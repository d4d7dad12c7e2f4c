"""The report's style map: why a patient is hard, and whether synthetic data helps where it should.

Every slide as a point of the 2-D map of its style (PCA of standardised features,
:mod:`sedm.styles.space` documents the choice), synthetic sets beside their source slides, each test
patient's distance to the nearest labelled style, and per arm Dice and gain over the baseline against
that distance with the rank correlations ``sedm evaluate`` wrote to summary.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from sedm.flags import FLAGS
from sedm.report import plots
from sedm.report.layout import ResultsLayout
from sedm.report.tables import Figure, Table, fmt, fmt_p, natural_key, not_run, read_json
from sedm.styles.space import (KIND, REAL, ROLE, SLIDE_ID, SOURCE_TO_LABELLED, SPACES, SYNTHETIC, TO_SOURCE, StyleSpace,
                               fit_space, patient_distances, read_table, synthetic_offsets)

SPACE_TITLES = {"stain": "stain features (HED optical density, brightness, saturation, sharpness)",
                "embedding": "the diffusion model's style vectors"}


def _xy(space: StyleSpace, rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows[np.isfinite(rows[space.columns].to_numpy(np.float64)).all(axis=1)]
    p = space.project(rows) if len(rows) else np.zeros((0, 2))
    p = np.pad(p, ((0, 0), (0, 2 - p.shape[1])))
    return pd.DataFrame({SLIDE_ID: rows[SLIDE_ID].to_numpy(), ROLE: rows[ROLE].to_numpy(), "x": p[:, 0],
                         "y": p[:, 1]})


def _correlations(style_distance: Any) -> Table | None:
    spaces = style_distance.get("spaces") if isinstance(style_distance, Mapping) else None
    if not isinstance(spaces, Mapping):
        return None
    rows = []
    for name, entry in spaces.items():
        for arm, per in (entry.get("arms") or {}).items():
            for quantity in ("dice", "gain"):
                c = per.get(quantity)
                if isinstance(c, Mapping):
                    rows.append([name, arm, "Dice" if quantity == "dice" else "gain over baseline", fmt(c.get("rho")),
                                 fmt(c.get("ci95")), fmt_p(c.get("p")), fmt(c.get("n")),
                                 "descriptive" if c.get("descriptive") else "", fmt(c.get("note"))])
    if not rows:
        return None
    return Table(["space", "arm", "against distance", "Spearman rho", "95% bootstrap CI", "p", "patients", "", "note"],
                 rows, [False, False, False, True, True, True, True, False, False])


def style_map_section(samples: pd.DataFrame, layout: ResultsLayout, evaluation: dict, figures: list[Figure]) -> dict:
    """The style maps, the test patients' distances and gain vs distance (when evaluated)."""
    if not layout.style_table.is_file():
        return not_run([layout.style_table])
    table = read_table(str(layout.style_table))
    summary = read_json(layout.eval_summary)
    style_distance = summary.get("style_distance") if isinstance(summary, Mapping) else None
    baseline = style_distance.get("baseline") if isinstance(style_distance, Mapping) else None
    test_slides = samples.loc[samples["role"] == "test", "slide_id"].tolist()
    scores = evaluation.get("scores")
    out: dict[str, Any] = {"ran": True, "maps": [], "distances": None, "gain": [], "synthetic": None,
                           "synthetic_flags": [], "correlations": _correlations(style_distance)}
    dist_cols: dict[str, pd.Series] = {}
    for name in SPACES:
        space = fit_space(table, name)
        if space is None:
            continue
        points, synthetic = _xy(space, table[table[KIND] == REAL]), _xy(space, table[table[KIND] == SYNTHETIC])
        axes = [f"PC{i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(space.explained)]
        fig = Figure("styles", f"style_map_{name}", plots.style_map(points, synthetic, axes),
                     f"Style map of {SPACE_TITLES[name]}: PCA of {len(space.columns)} standardised features over "
                     f"the real slides; crosses are synthetic sets, joined to their source slide")
        figures.append(fig)
        out["maps"].append(fig)
        dist_cols[name] = patient_distances(table, space, test_slides)
        if scores is not None:
            vals = scores.values().rename(columns={"value": "dice"})
            vals["distance"] = vals["patient"].map(dist_cols[name])
            base = vals[vals["arm"] == baseline].set_index("patient")["dice"] if baseline else pd.Series(dtype=float)
            vals["gain"] = vals["dice"] - vals["patient"].map(base) if baseline else np.nan
            label = f"distance to nearest labelled style ({name})"
            gain = Figure("styles", f"gain_vs_distance_{name}",
                          plots.gain_vs_distance(vals, scores.arms, baseline, label),
                          f"Per test patient: Dice per arm and gain over {baseline} against the {label}")
            figures.append(gain)
            out["gain"].append(gain)
        if name == "stain":
            out["synthetic"], out["synthetic_flags"] = _synthetic_table(table, space)
    if not out["maps"]:
        return not_run([f"{layout.style_table} has fewer than two slides with finite features"])
    if dist_cols:
        patients = sorted(set().union(*(d.index for d in dist_cols.values())), key=natural_key)
        rows = [[p] + [fmt(dist_cols[n].get(p)) for n in dist_cols] for p in patients]
        out["distances"] = Table(["test patient"] + [f"distance ({n})" for n in dist_cols], rows,
                                 [False] + [True] * len(dist_cols))
    return out


def _synthetic_table(table: pd.DataFrame, space: StyleSpace) -> tuple[Table | None, list[str]]:
    """Per synthetic set: its distance to its source slide and, for scale, the source's distance to
    the nearest labelled slide (a set closer to its source than that took on the source's style; one
    farther is flagged, :func:`sedm.styles.space.synthetic_offsets`); and the flags of every set."""
    offsets = synthetic_offsets(table, space)
    if not len(offsets):
        return None, []
    rows = [[slide, fmt(r[TO_SOURCE]), fmt(r[SOURCE_TO_LABELLED]), "flagged" if r[FLAGS] else ""]
            for slide, r in offsets.iterrows()]
    flags = [f for its in offsets[FLAGS] for f in its]
    return Table(["source slide", "synthetic set to source", "source to nearest labelled", ""], rows,
                 [False, True, True, False]), flags
