"""Across-patient statistics and the paired comparison of two arms.

The unit is the patient: slides of one patient are not independent, so per-patient scores are
what the spread, the test and the confidence interval are computed over. NaN scores (see
sedm.evaluation.metrics) are dropped before any statistic.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def describe(values: Any) -> dict[str, float | int]:
    """n, mean, std (ddof 1), median, quartiles, IQR, min, max of the finite values (NaN when empty)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    nan = float("nan")
    if not len(v):
        return {"n": 0, "mean": nan, "std": nan, "median": nan, "q1": nan, "q3": nan, "iqr": nan,
                "min": nan, "max": nan}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else nan,
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(v.min()), "max": float(v.max())}


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices of patients drawn with replacement: one seed gives the same resamples to
    every statistic of one comparison, so its CIs describe the same bootstrap."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(diffs: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling patients with replacement."""
    d = np.asarray(diffs, dtype=np.float64)
    if not len(d):
        return float("nan"), float("nan")
    return _percentile_ci(d[_resamples(len(d), n_boot, seed)].mean(axis=1), level)


def worst_bootstrap_ci(arm: np.ndarray, baseline: np.ndarray, n_boot: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the difference of the worst (lowest) per-patient scores of two arms,
    resampling patients (pairs) with replacement: each resample's worst patient of either arm may be
    another patient, as in the data."""
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if not len(a):
        return float("nan"), float("nan")
    idx = _resamples(len(a), n_boot, seed)
    return _percentile_ci(a[idx].min(axis=1) - b[idx].min(axis=1), level)


def wilcoxon_p(diffs: np.ndarray) -> tuple[float, str | None]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, with a note when undefined.

    Zero differences are dropped (Wilcoxon's original treatment); scipy picks the exact
    distribution for small samples without ties.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return float("nan"), f"Wilcoxon test needs at least 2 patients (have {len(d)})"
    if not np.any(d != 0):
        return float("nan"), "all paired differences are zero: Wilcoxon test undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scipy import stats  # on use: scipy.stats costs the start-up of every command reading this module

        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return p, None


DESCRIPTIVE_BELOW = 10
"""Patient-level statistics over fewer patients than this (rank correlations of gain vs style distance,
paired comparisons of arms) are labelled descriptive: their bootstrap CI is wide and resamples of a
handful of patients repeat the same few, so a CI that excludes 0 is no evidence; and the exact
Wilcoxon test cannot reach small p-values (the smallest two-sided p over n patients is 2 / 2**n,
0.0625 for 5). They describe these patients; no p-value is read from them."""


def is_descriptive(n: int) -> bool:
    """Whether a statistic over ``n`` patients is descriptive (:data:`DESCRIPTIVE_BELOW`)."""
    return n < DESCRIPTIVE_BELOW


def descriptive_note(n: int) -> str:
    """The note beside every descriptive statistic, in JSON, logs and the report."""
    return f"descriptive: {n} patients (< {DESCRIPTIVE_BELOW}); CI and p are not evidence"


def paired_comparison(arm: np.ndarray, baseline: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired per-patient difference ``arm - baseline``: mean, bootstrap 95% CI, Wilcoxon p; and the
    difference of the worst patients' scores (``worst_diff``) with its bootstrap 95% CI over the same
    resamples (``worst_ci95``).

    Patients with a NaN in either arm are left out (counted in ``n``). ``descriptive`` is set below
    :data:`DESCRIPTIVE_BELOW` patients, with :func:`descriptive_note` in ``note``.
    """
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    p, note = wilcoxon_p(d)
    lo, hi = bootstrap_ci(d, n_boot, seed)
    worst_lo, worst_hi = worst_bootstrap_ci(a, b, n_boot, seed)
    notes = [note] if note else []
    if len(d) == 1:
        notes.append("the CI of one patient is a point")
    descriptive = is_descriptive(len(d))
    if descriptive:
        notes.append(descriptive_note(len(d)))
    nan = float("nan")
    return {"mean_diff": float(d.mean()) if len(d) else nan, "ci95": [lo, hi], "wilcoxon_p": p,
            "worst_diff": float(a.min() - b.min()) if len(d) else nan, "worst_ci95": [worst_lo, worst_hi],
            "n": int(len(d)), "descriptive": descriptive, "note": "; ".join(notes) or None}


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=-1) / den, np.nan)


def spearman_bootstrap(x: Any, y: Any, n_boot: int, seed: int, level: float = 0.95) -> dict[str, Any]:
    """Spearman's rho of paired values (scipy's definition: Pearson of average ranks), its two-sided
    p-value and a percentile bootstrap CI resampling pairs (patients) with replacement.

    Pairs with a NaN are left out; resamples whose ranks are constant (rho undefined) are dropped and
    counted (``n_boot_valid``). ``descriptive`` is set below :data:`DESCRIPTIVE_BELOW` pairs.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n, nan = len(x), float("nan")
    out: dict[str, Any] = {"rho": nan, "p": nan, "ci95": [nan, nan], "n": n, "n_boot_valid": 0,
                           "descriptive": is_descriptive(n), "note": None}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = f"undefined: {n} patient(s)" + ("" if n < 3 else ", constant values")
        return out
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    out["rho"], out["p"] = float(res.statistic), float(res.pvalue)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rho = _row_pearson(stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1))
    rho = rho[np.isfinite(rho)]
    out["n_boot_valid"] = int(len(rho))
    if len(rho):
        lo, hi = np.percentile(rho, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
        out["ci95"] = [float(lo), float(hi)]
    if out["descriptive"]:
        out["note"] = descriptive_note(n)
    return out
