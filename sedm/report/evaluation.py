"""The report's evaluation sections: per-patient scores per arm, their spread, the paired
comparisons between arms, and prediction overlays of the best and worst patient.

The tables are read by the column and file names ``sedm evaluate`` publishes
(:mod:`sedm.evaluation.outputs`); the summary's per-arm entries are shown as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sedm.evaluation import outputs as E
from sedm.evaluation.metrics import read_confusion
from sedm.evaluation.stats import DESCRIPTIVE_BELOW, descriptive_note, is_descriptive
from sedm.report import plots
from sedm.report.layout import ResultsLayout
from sedm.report.tables import (Figure, Table, first_table, fmt, fmt_p, frame_table, natural_key, not_run, png_bytes,
                                read_json)

MAX_OVERLAY_SLIDES = 3


@dataclass
class PatientScores:
    """The per-patient table with its arm, patient and headline-metric columns identified."""

    df: pd.DataFrame
    arm: str
    patient: str
    metric: str
    arms: list[str]
    patients: list[str]

    def values(self) -> pd.DataFrame:
        return pd.DataFrame({"arm": self.df[self.arm].astype(str), "patient": self.df[self.patient].astype(str),
                             "value": pd.to_numeric(self.df[self.metric], errors="coerce")})


def patient_scores(df: pd.DataFrame | None, arm_order: Sequence[str]) -> PatientScores | None:
    """The per-patient table with its arms and patients ordered; None if it lacks the arm, patient or
    macro Dice column that ``sedm evaluate`` writes."""
    if df is None or not len(df) or not {E.ARM, E.PATIENT, E.MACRO_DICE} <= set(df.columns):
        return None
    df = df.copy()
    df[E.ARM] = df[E.ARM].astype(str)
    df[E.PATIENT] = df[E.PATIENT].astype(str)
    present = list(dict.fromkeys(df[E.ARM]))
    arms = [a for a in arm_order if a in present] + [a for a in present if a not in arm_order]
    patients = sorted(df[E.PATIENT].unique(), key=natural_key)
    return PatientScores(df, E.ARM, E.PATIENT, E.MACRO_DICE, arms, patients)


def _variability(summary_arms: Mapping, scores: PatientScores | None) -> Table:
    """Per arm: spread of per-patient Dice (std, IQR, worst), from the summary and the table."""
    arms = list(summary_arms) or (scores.arms if scores else [])
    if scores:
        arms += [a for a in scores.arms if a not in arms]
    cols = ["arm", "n patients", "mean Dice", "std", "IQR", "median", "worst", "mean IoU"]
    rows = []
    vals = scores.values() if scores else None
    iou_means = {} if scores is None or E.MACRO_IOU not in scores.df.columns else \
        pd.to_numeric(scores.df[E.MACRO_IOU], errors="coerce").groupby(scores.df[scores.arm]).mean().to_dict()
    for arm in arms:
        s = summary_arms.get(arm, {}) if isinstance(summary_arms.get(arm, {}), Mapping) else {}
        v = vals.loc[vals["arm"] == arm, "value"].dropna().to_numpy() if vals is not None else np.array([])
        iqr = s.get("iqr_dice")
        if iqr is None and len(v):
            q1, q3 = np.percentile(v, [25, 75])
            iqr = float(q3 - q1)
        rows.append([
            arm,
            fmt(s.get("n_patients", len(v) if len(v) else None)),
            fmt(s.get("mean_dice", float(v.mean()) if len(v) else None)),
            fmt(s.get("std_dice", float(v.std(ddof=1)) if len(v) > 1 else None)),
            fmt(iqr),
            fmt(s.get("median_dice", float(np.median(v)) if len(v) else None)),
            fmt(s.get("worst_dice", float(v.min()) if len(v) else None)),
            fmt(s.get("mean_iou", iou_means.get(arm))),
        ])
    return Table(cols, rows, [False] + [True] * (len(cols) - 1))


def _per_class(summary_arms: Mapping) -> Table | None:
    """One row per arm x class with whatever per-class numbers the summary holds."""
    rows, metrics = [], []
    for arm, s in summary_arms.items():
        per_class = s.get("per_class") if isinstance(s, Mapping) else None
        if not isinstance(per_class, Mapping):
            continue
        for cls, v in per_class.items():
            v = v if isinstance(v, Mapping) else {"value": v}
            metrics += [m for m in v if m not in metrics]
            rows.append((str(arm), str(cls), v))
    if not rows:
        return None
    table = [[arm, cls] + [fmt(v.get(m)) for m in metrics] for arm, cls, v in rows]
    return Table(["arm", "class"] + [str(m) for m in metrics], table, [False, False] + [True] * len(metrics))


COMPARISON_KEYS = ("arm", "baseline", "mean_diff", "ci95", "wilcoxon_p", "worst_diff", "worst_ci95", "n_patients",
                   "descriptive", "note")
"""Keys of a summary.json comparison shown in fixed columns; any other key gets a column of its own."""


def _comparisons(comparisons: Any) -> Table | None:
    """The paired comparisons, each marked descriptive below :data:`DESCRIPTIVE_BELOW` patients (as
    summary.json says, or from its patient count for a summary written before it said so)."""
    if not isinstance(comparisons, list) or not comparisons:
        return None
    extra = []
    for comp in comparisons:
        if isinstance(comp, Mapping):
            extra += [k for k in comp if k not in COMPARISON_KEYS and k not in extra]
    header = ["arm", "baseline", "mean difference", "95% CI", "Wilcoxon p", "worst-patient difference", "95% CI",
              "patients", "", "note"] + [str(k) for k in extra]
    rows = []
    for comp in comparisons:
        if not isinstance(comp, Mapping):
            continue
        n, note = comp.get("n_patients"), comp.get("note")
        descriptive = comp.get("descriptive")
        if descriptive is None and isinstance(n, int):
            descriptive = is_descriptive(n)
            note = "; ".join(x for x in (note, descriptive_note(n) if descriptive else None) if x) or None
        rows.append([fmt(comp.get("arm")), fmt(comp.get("baseline")), fmt(comp.get("mean_diff")),
                     fmt(comp.get("ci95")), fmt_p(comp.get("wilcoxon_p")), fmt(comp.get("worst_diff")),
                     fmt(comp.get("worst_ci95")), fmt(n),
                     "descriptive" if descriptive else "", fmt(note or None)] + [fmt(comp.get(k)) for k in extra])
    return Table(header, rows, [False, False, True, True, True, True, True, True, False, False] + [True] * len(extra))


CONFUSION_CAPTION = ("Rows = annotation (reference), columns = prediction; pixels pooled over the test "
                     "patients. Column unannotated: annotated pixels the prediction left outside its tissue mask.")


def _confusion(scores: PatientScores, classes: Sequence[str] | None) -> list[dict]:
    """Per arm, the confusion matrix pooled over patients (the sum of the per-patient cells), as a
    table whose corner cell and caption say how it reads."""
    if E.CONFUSION not in scores.df.columns:
        return []
    out = []
    for arm in scores.arms:
        total, names = None, None
        for cell in scores.df.loc[scores.df[scores.arm] == arm, E.CONFUSION]:
            parsed = read_confusion(cell, classes)
            if parsed is None or (names is not None and parsed[0] != names):
                total = None
                break
            names, total = parsed[0], parsed[1] if total is None else total + parsed[1]
        if total is None:
            continue
        rows = [[f"true: {names[t]}"] + [fmt(int(v)) for v in total[t]] for t in range(1, len(names))]
        out.append({"arm": arm, "caption": f"{arm}: {CONFUSION_CAPTION}",
                    "table": Table(["truth \\ prediction"] + [f"pred: {n}" for n in names], rows,
                                   [False] + [True] * len(names))})
    return out


def evaluation_section(layout: ResultsLayout, figures: list[Figure], classes: Sequence[str] | None = None) -> dict:
    """Per-patient metrics per arm, their spread, the paired comparisons between arms and the pooled
    confusion matrices (``classes``: the config's, to name the label values of older bare matrices)."""
    summary = read_json(layout.eval_summary)
    per_patient, pp_path = first_table(layout.per_patient)
    if summary is None and per_patient is None:
        return not_run([layout.eval_summary, *layout.per_patient])
    summary = summary if isinstance(summary, Mapping) else {}
    summary_arms = summary.get("arms") if isinstance(summary.get("arms"), Mapping) else {}
    scores = patient_scores(per_patient, list(summary_arms))
    out: dict[str, Any] = {
        "ran": True,
        "unit": summary.get("unit", "patient"),
        "variability": _variability(summary_arms, scores),
        "per_class": _per_class(summary_arms),
        "comparisons": _comparisons(summary.get("comparisons")),
        "descriptive_below": DESCRIPTIVE_BELOW,
        "metric": scores.metric if scores else None,
        "per_arm": [],
        "box": None,
        "bars": None,
        "per_patient_note": None,
        "confusion": [],
    }
    if scores is None:
        out["per_patient_note"] = (f"{pp_path} has no arm / patient / Dice columns" if per_patient is not None
                                   else "per-patient table not found: " + ", ".join(map(str, layout.per_patient)))
        return out
    values = scores.values()
    box = Figure("evaluation", "per_patient_box", plots.per_patient_box(values, scores.arms, scores.metric),
                 f"Per-patient {scores.metric} per arm (one point per patient)")
    bars = Figure("evaluation", "per_patient_bars",
                  plots.per_patient_bars(values, scores.arms, scores.patients, scores.metric),
                  f"Per-patient {scores.metric}, grouped by patient")
    figures += [box, bars]
    out["box"], out["bars"] = box, bars
    # the JSON confusion cells are shown as tables of their own (below), not as text in these
    metric_cols = [c for c in scores.df.columns if c not in (scores.arm, scores.patient, E.CONFUSION)]
    for arm in scores.arms:
        sub = scores.df.loc[scores.df[scores.arm] == arm, [scores.patient] + metric_cols]
        sub = sub.sort_values(scores.patient, key=lambda s: s.map(natural_key))
        out["per_arm"].append({"arm": arm, "table": frame_table(sub)})
    out["confusion"] = _confusion(scores, classes)
    out["scores"] = scores
    return out


def focus_arm(scores: PatientScores, preferred: Sequence[str] = ("stedm",)) -> str:
    """The arm whose best and worst patients are shown: the STEDM arm if there is one, else the
    arm with the highest mean per-patient score."""
    for name in preferred:
        if name in scores.arms:
            return name
    means = scores.values().groupby("arm")["value"].mean()
    return str(means.reindex(scores.arms).idxmax())


def predictions_section(samples: pd.DataFrame, layout: ResultsLayout, evaluation: dict,
                        figures: list[Figure]) -> dict:
    """Overlays of the focus arm's best and worst patient, for every arm side by side."""
    scores: PatientScores | None = evaluation.get("scores")
    pred_root = layout.prediction_overlay("ARM", "SLIDE").parent.parent
    if scores is None:
        arms = sorted(p.name for p in pred_root.iterdir() if p.is_dir()) if pred_root.is_dir() else []
        if not arms:
            return not_run([pred_root])
        test = samples.loc[samples["role"] == "test", ["slide_id", "patient_id"]]
        cases = [{"label": f"patient {pid}", "patient": pid, "score": None,
                  "slides": test.loc[test["patient_id"] == pid, "slide_id"].tolist()[:MAX_OVERLAY_SLIDES]}
                 for pid in list(dict.fromkeys(test["patient_id"]))[:2]]
        focus = None
    else:
        arms = scores.arms
        focus = focus_arm(scores)
        vals = scores.values()
        vals = vals[(vals["arm"] == focus) & vals["value"].notna()].sort_values(
            ["value", "patient"], ascending=[False, True])
        if vals.empty:
            return not_run([f"no per-patient scores for arm {focus}"])
        picks = [("best", vals.iloc[0])]
        if len(vals) > 1:
            picks.append(("worst", vals.iloc[-1]))
        per_slide, _ = first_table(layout.per_slide)
        cases = []
        for label, row in picks:
            slides = _patient_slides(str(row["patient"]), samples, per_slide)
            cases.append({"label": f"{label} patient", "patient": row["patient"], "score": fmt(row["value"]),
                          "slides": slides[:MAX_OVERLAY_SLIDES]})
    n_found = 0
    for case in cases:
        grid = []
        for slide in case["slides"]:
            row = []
            for arm in arms:
                png = png_bytes(layout.prediction_overlay(arm, slide), max_side=700)
                fig = None
                if png is not None:
                    fig = Figure("predictions", f"overlay_{arm}_{slide}", png, f"{arm}: {slide}")
                    figures.append(fig)
                    n_found += 1
                row.append(fig)
            grid.append({"slide": slide, "cells": row})
        case["grid"] = grid
    if n_found == 0:
        return not_run([layout.prediction_overlay(a, c["slides"][0] if c["slides"] else "SLIDE")
                         for a in arms[:1] for c in cases[:1]] or [pred_root])
    return {"ran": True, "arms": arms, "focus": focus, "metric": scores.metric if scores else None,
            "cases": cases}


def _patient_slides(patient: str, samples: pd.DataFrame, per_slide: pd.DataFrame | None) -> list[str]:
    """The evaluated slides of a patient: from the per-slide table, else the sample sheet's test slides."""
    if per_slide is not None and {E.PATIENT, E.SLIDE} <= set(per_slide.columns):
        slides = per_slide.loc[per_slide[E.PATIENT].astype(str) == patient, E.SLIDE].astype(str)
        if len(slides):
            return sorted(dict.fromkeys(slides), key=natural_key)
    test = samples[(samples["role"] == "test") & (samples["patient_id"] == patient)]
    return test["slide_id"].tolist()
