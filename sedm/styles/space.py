"""The cohort's style space: one standardised feature space, its 2-D map and the distances in it.

The documented choice (README, report):

* **Features**: per slide either the stain features (:data:`sedm.styles.features.FEATURES`, always
  there) or the mean style vector of the diffusion model (``emb_*`` columns, once the model exists).
* **Standardisation**: each feature z-scored over the cohort's real slides (labelled, unlabelled and
  test; no labels are used, so including test slides leaks nothing). Without it the feature with the
  largest units (sharpness) would decide every distance. Features constant over the cohort are dropped.
* **Distance to the labelled styles**: Euclidean distance, in the full standardised space (not in the
  2-D map, which loses what its two axes do not show), from a slide to the nearest labelled slide; a
  labelled slide's own distance is to the nearest *other* labelled slide. A patient's distance is the
  mean over its slides.
* **Map**: PCA of the standardised features, fitted on the real slides; synthetic sets are placed by
  the same standardisation and axes, so a set lying beside its source slide took on its style. Each
  axis' sign makes its largest loading positive, so the map does not flip between runs.
* **Synthetic set vs its source** (:func:`synthetic_offsets`): a synthetic set's distance to its
  source slide, beside the source's distance to the nearest labelled slide. A set farther from its
  source than that is flagged (``flags`` of :mod:`sedm.flags`): the labelled tiles themselves were
  already closer to the source's style than the synthetic ones, so the set does not carry it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sedm.flags import FLAGS
from sedm.styles.features import FEATURES

SLIDE_ID, PATIENT_ID, ROLE, KIND = "slide_id", "patient_id", "role", "kind"
"""Identity columns of the cohort table: a row is a real slide (kind ``slide``) or the synthetic set
made in the style of a slide (kind ``synthetic``, role of its source slide)."""
REAL, SYNTHETIC = "slide", "synthetic"
EMBEDDING_PREFIX = "emb_"
EMBEDDING_SPREAD = "emb_spread"
"""Mean per-dimension standard deviation of a slide's style vectors (not a coordinate of the space)."""
SPACES = ("stain", "embedding")


def space_columns(table: pd.DataFrame, space: str) -> list[str]:
    """The feature columns of ``space`` present in ``table`` (empty when the space is not available)."""
    if space == "stain":
        return [c for c in FEATURES if c in table.columns]
    if space == "embedding":
        return [c for c in table.columns if c.startswith(EMBEDDING_PREFIX) and c != EMBEDDING_SPREAD]
    raise ValueError(f"unknown style space {space!r}; one of {SPACES}")


@dataclass(frozen=True)
class StyleSpace:
    """A standardisation and PCA fitted on the real slides of a cohort table."""

    name: str
    columns: list[str]
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    """(2, d) principal axes in standardised units (fewer rows when there are fewer dimensions)."""
    explained: np.ndarray
    """Share of the total standardised variance along each axis."""

    def standardise(self, table: pd.DataFrame) -> np.ndarray:
        return (table[self.columns].to_numpy(np.float64) - self.mean) / self.scale

    def project(self, table: pd.DataFrame) -> np.ndarray:
        return self.standardise(table) @ self.components.T


def fit_space(table: pd.DataFrame, space: str = "stain") -> StyleSpace | None:
    """The space fitted on ``table``'s real slides with finite features; None without two of them."""
    columns = space_columns(table, space)
    real = table[(table[KIND] == REAL)] if columns else table.iloc[:0]
    real = real[np.isfinite(real[columns].to_numpy(np.float64)).all(axis=1)] if columns else real
    if len(real) < 2:
        return None
    x = real[columns].to_numpy(np.float64)
    scale = x.std(axis=0)
    keep = scale > 1e-12 * np.maximum(1.0, np.abs(x.mean(axis=0)))
    if not keep.any():
        return None
    columns = [c for c, k in zip(columns, keep) if k]
    x, scale = x[:, keep], scale[keep]
    mean = x.mean(axis=0)
    z = (x - mean) / scale
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    k = min(2, len(s))
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1, signs)[:, None]
    total = float((s**2).sum())
    explained = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return StyleSpace(space, columns, mean, scale, comps, explained)


def nearest_labelled(table: pd.DataFrame, space: StyleSpace) -> pd.Series:
    """Per real slide (index: slide ID), the distance to the nearest labelled slide (module docstring);
    NaN without a labelled slide to compare with or with undefined features."""
    real = table[table[KIND] == REAL].set_index(SLIDE_ID)
    z = pd.DataFrame(space.standardise(real), index=real.index)
    labelled = z[(real[ROLE] == "labelled").to_numpy() & np.isfinite(z.to_numpy()).all(axis=1)]
    out = {}
    for slide, row in z.iterrows():
        refs = labelled.drop(index=slide, errors="ignore").to_numpy()
        v = row.to_numpy()
        out[slide] = float(np.sqrt(((refs - v) ** 2).sum(axis=1)).min()) if len(refs) and np.isfinite(v).all() \
            else float("nan")
    return pd.Series(out, name=f"{space.name}_distance", dtype=np.float64)


TO_SOURCE, SOURCE_TO_LABELLED = "to_source", "source_to_labelled"
"""Columns of :func:`synthetic_offsets` (the style table prefixes them with the space's name)."""


def synthetic_offsets(table: pd.DataFrame, space: StyleSpace) -> pd.DataFrame:
    """Per synthetic set with finite features in ``space`` (index: its source slide ID): its distance
    to the source slide (:data:`TO_SOURCE`, NaN when the source is not in the table), the source's
    distance to the nearest labelled slide (:data:`SOURCE_TO_LABELLED`, :func:`nearest_labelled`),
    and :data:`~sedm.flags.FLAGS`, a list: flagged where the set is farther from its source than that."""
    syn = table[table[KIND] == SYNTHETIC]
    syn = syn[np.isfinite(syn[space.columns].to_numpy(np.float64)).all(axis=1)]
    real = table[table[KIND] == REAL].drop_duplicates(SLIDE_ID).set_index(SLIDE_ID)
    to_labelled = nearest_labelled(table, space)
    rows = {}
    for (_, row), z in zip(syn.iterrows(), space.standardise(syn)):
        slide = row[SLIDE_ID]
        d = float(np.linalg.norm(z - space.standardise(real.loc[[slide]])[0])) if slide in real.index else np.nan
        ref = float(to_labelled.get(slide, np.nan))
        flags = []
        if d > ref:  # False for NaN: nothing to compare is nothing flagged
            flags.append(f"synthetic set of {slide} is farther from its source slide in the {space.name} space "
                         f"({d:.3f}) than the nearest labelled slide is ({ref:.3f}): it does not carry its "
                         "source's style")
        rows[slide] = {TO_SOURCE: d, SOURCE_TO_LABELLED: ref, FLAGS: flags}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[TO_SOURCE, SOURCE_TO_LABELLED, FLAGS])


def patient_distances(table: pd.DataFrame, space: StyleSpace, slides: Sequence[str] | None = None) -> pd.Series:
    """Per patient, the mean distance of its slides (``slides``: only these, e.g. the evaluated ones)."""
    dist = nearest_labelled(table, space)
    real = table[table[KIND] == REAL].set_index(SLIDE_ID)
    if slides is not None:
        dist = dist[dist.index.isin(list(slides))]
    return dist.groupby(real.loc[dist.index, PATIENT_ID]).mean().rename(dist.name)


def read_table(path: str) -> pd.DataFrame:
    """The cohort table ``sedm style-table`` writes (TSV); IDs kept as text."""
    return pd.read_csv(path, sep="\t", dtype={SLIDE_ID: str, PATIENT_ID: str, ROLE: str, KIND: str})


def cohort_table(samples: pd.DataFrame, stats: Sequence[Mapping], synthetic: Sequence[Mapping] = (),
                 embeddings: Sequence[Mapping] = ()) -> pd.DataFrame:
    """One row per real slide and per synthetic set: identity, tissue pixels, stain features and, for
    slides with an embedding, the mean style vector (``emb_<i>``) and its spread."""
    emb = {e["slide_id"]: e for e in embeddings}
    rows = []
    for kind, items in ((REAL, stats), (SYNTHETIC, synthetic)):
        for s in items:
            slide = s["slide_id"]
            row = {SLIDE_ID: slide, PATIENT_ID: samples.at[slide, "patient_id"], ROLE: samples.at[slide, "role"],
                   KIND: kind, "tissue_pixels": s["tissue_pixels"],
                   **{k: np.nan if v is None else v for k, v in s["features"].items()}}
            if kind == REAL and slide in emb:
                row.update({f"{EMBEDDING_PREFIX}{i}": v for i, v in enumerate(emb[slide]["mean"])})
                row[EMBEDDING_SPREAD] = emb[slide]["spread"]
            rows.append(row)
    return pd.DataFrame(rows)
