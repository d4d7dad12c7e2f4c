"""Does synthetic data help most where the test patient's style is far from the labelled slides'?

Per style space of the cohort table (:mod:`sedm.styles.space`: stain features always, the diffusion
model's style vectors once it exists) each test patient gets its distance to the nearest labelled
style; per arm, Spearman's rho of the per-patient macro Dice against that distance and, for every arm
but the baseline, of the gain over the baseline (paired per patient), with a patient bootstrap CI
(:func:`sedm.evaluation.stats.spearman_bootstrap`). A positive gain correlation is STEDM's claim:
the farther the style, the more the synthetic data adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from sedm.evaluation.outputs import ARM, MACRO_DICE, PATIENT
from sedm.evaluation.stats import DESCRIPTIVE_BELOW, spearman_bootstrap
from sedm.styles.space import SPACES, fit_space, patient_distances


def distance_column(space: str) -> str:
    """Per-patient table column of the distance in ``space``."""
    return f"{space}_style_distance"


def style_gain(per_patient: pd.DataFrame, table: pd.DataFrame, slides: Sequence[str], baseline: str | None,
               n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, pd.Series]]:
    """The ``style_distance`` entry of summary.json and the per-patient distance per space."""
    pivot = per_patient.pivot(index=PATIENT, columns=ARM, values=MACRO_DICE)
    arms = list(dict.fromkeys(per_patient[ARM]))
    spaces, distances = {}, {}
    for s_i, name in enumerate(SPACES):
        space = fit_space(table, name)
        if space is None:
            continue
        dist = patient_distances(table, space, slides).reindex(pivot.index)
        distances[name] = dist
        per_arm = {}
        for a_i, arm in enumerate(arms):
            seed_arm = seed + 1000 * s_i + 10 * a_i
            entry = {"dice": spearman_bootstrap(dist, pivot[arm], n_boot, seed_arm)}
            if baseline in pivot.columns and arm != baseline:
                entry["gain"] = spearman_bootstrap(dist, pivot[arm] - pivot[baseline], n_boot, seed_arm + 1)
            per_arm[str(arm)] = entry
        spaces[name] = {"features": space.columns, "explained_2d": space.explained.tolist(),
                        "patients": {str(p): float(d) for p, d in dist.items()}, "arms": per_arm}
    return {"baseline": baseline, "method": "Spearman rho, percentile bootstrap over patients",
            "descriptive_below": DESCRIPTIVE_BELOW, "spaces": spaces}, distances
