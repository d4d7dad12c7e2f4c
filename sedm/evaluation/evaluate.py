"""``sedm evaluate``: per-patient Dice / IoU of every arm on the test slides, and arm comparisons.

Per test slide a confusion matrix against the store's annotation (unannotated pixels excluded);
a patient's matrix is the sum of its slides' (so a patient counts once however many slides it has);
Dice / IoU per class and macro per patient (conventions, NaN for absent classes included, in
sedm.evaluation.metrics); across patients mean, std, median, IQR and the worst patient, plus
pooled over all pixels. Each arm is compared with the baseline arm on paired per-patient macro
Dice: mean difference, patient-level bootstrap 95% CI and Wilcoxon signed-rank p-value, and the
difference of the worst patients with its bootstrap CI, marked descriptive (and logged at WARNING)
below :data:`sedm.evaluation.stats.DESCRIPTIVE_BELOW` patients.

With ``--styles`` (the cohort table of ``sedm style-table``) each test patient also gets its distance
to the nearest labelled style, and summary.json the rank correlation of Dice and of the gain over the
baseline with it (:mod:`sedm.evaluation.style_gain`).

Outputs in ``--out``: per_slide / per_patient tables (.parquet + .csv), summary.json (see
:func:`summary_json`) and summary.csv (every statistic of every arm x class x metric).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sedm.atomic import atomic_path, write_text
from sedm.config import load_config, load_samples
from sedm.errors import InputError
from sedm.evaluation.metrics import confusion_matrix, confusion_record, dice_iou, macro
from sedm.evaluation.outputs import (ARM, CONFUSION, MACRO_DICE, MACRO_IOU, PATIENT, PER_PATIENT, PER_SLIDE, SLIDE,
                                     SUMMARY_CSV, SUMMARY_JSON, TABLE_SUFFIXES, class_column)
from sedm.evaluation.stats import describe, paired_comparison
from sedm.evaluation.style_gain import distance_column, style_gain
from sedm.styles.space import SLIDE_ID as STYLE_SLIDE, read_table as read_style_table
from sedm.segmentation.outputs import PREDICTED_LABELS

if TYPE_CHECKING:
    from sedm.tiling.store import SlideStore

# zarr (and the slide store on it) is imported where a store is opened: `sedm evaluate` starts without it.

log = logging.getLogger(__name__)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="sedm config or the evaluation stage snapshot")
    parser.add_argument("--samples", required=True, type=Path, help="sample sheet (patient of each slide)")
    parser.add_argument("--predictions", nargs="+", required=True, metavar="ARM=PATH",
                        help="prediction Zarr of one slide, or a folder of <slide>.zarr predictions, per arm")
    parser.add_argument("--stores", nargs="+", required=True, type=Path, help="stores of the test slides (truth)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the tables and summary into")
    parser.add_argument("--styles", type=Path, default=None,
                        help="cohort style table (sedm style-table): adds gain vs style distance")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    samples = load_samples(args.samples)
    predictions = parse_predictions(args.predictions)
    styles = None
    if args.styles is not None:
        if not args.styles.is_file():
            raise InputError(args.styles, "--styles", "file does not exist", "run `sedm style-table` first")
        styles = read_style_table(args.styles)
    evaluate(cfg, samples=samples, predictions=predictions, stores=args.stores, out=args.out, styles=styles)
    return 0


# ------------------------------------------------------------------------------------------ inputs
def _prediction_slide(path: Path) -> str | None:
    if not (path / "zarr.json").is_file():
        return None
    import zarr

    attrs = zarr.open_group(str(path), mode="r", zarr_format=3).attrs.get("sedm", {})
    return attrs.get("slide_id")


def parse_predictions(items: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``ARM=PATH`` items -> {arm: {slide_id: prediction path}} (arms in first-seen order)."""
    out: dict[str, dict[str, Path]] = {}
    for item in items:
        arm, sep, raw = item.partition("=")
        if not sep or not arm or not raw:
            raise InputError(None, "--predictions", f"{item!r} is not ARM=PATH",
                             "write e.g. real=results/predictions/real")
        path = Path(raw)
        slide = _prediction_slide(path)
        found = {slide: path} if slide else {}
        if not slide and path.is_dir():
            found = {s: p for p in sorted(path.glob("*.zarr")) if (s := _prediction_slide(p))}
        if not found:
            raise InputError(path, "--predictions", "no prediction Zarr here", "pass the output of `sedm predict`")
        arm_preds = out.setdefault(arm, {})
        for s, p in found.items():
            if s in arm_preds and arm_preds[s] != p:
                raise InputError(p, "--predictions", f"arm {arm!r} has two predictions of slide {s!r}",
                                 "pass one prediction per arm and slide")
            arm_preds[s] = p
    return out


# ---------------------------------------------------------------------------------------- per slide
def slide_confusion(store: SlideStore, pred_path: Path, band_tiles: int = 8) -> np.ndarray:
    """Confusion matrix of one slide, read in row bands (bounded memory)."""
    import zarr

    pred_root = zarr.open_group(str(pred_path), mode="r", zarr_format=3)
    attrs = dict(pred_root.attrs.get("sedm", {}))
    pred = pred_root[PREDICTED_LABELS]
    if tuple(pred.shape) != tuple(store.shape):
        raise InputError(pred_path, PREDICTED_LABELS, f"shape {pred.shape} differs from the store's {store.shape}",
                         f"predict from the store {store.path}")
    if attrs.get("classes") not in (None, store.classes):
        raise InputError(pred_path, "attrs.sedm.classes", f"classes {attrs['classes']} differ from the store's "
                         f"{store.classes}", "predict with a model of the same classes")
    k = len(store.classes)
    cm = np.zeros((k + 1, k + 1), np.int64)
    h, w = store.shape
    band = store.tile_size * band_tiles
    for y in range(0, h, band):
        truth = store.read_labels(y, 0, min(band, h - y), w)
        if truth.any():
            cm += confusion_matrix(truth, pred[y:y + truth.shape[0], :], k)
    return cm


def _scores(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    dice, iou = dice_iou(cm)
    row: dict[str, Any] = {"n_pixels": int(cm[1:].sum())}
    for c, d, j in zip(classes, dice, iou):
        row[class_column("dice", c)], row[class_column("iou", c)] = float(d), float(j)
    row[MACRO_DICE], row[MACRO_IOU] = macro(dice), macro(iou)
    row[CONFUSION] = json.dumps(confusion_record(cm, classes))
    return row


# -------------------------------------------------------------------------------------------- main
def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def summary_json(per_patient: pd.DataFrame, classes: Sequence[str], pooled: Mapping[str, np.ndarray],
                 comparisons: list[dict[str, Any]], style_distance: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"unit": "patient", "arms": {ARM: {...}}, "comparisons": [...]}`` with NaN written as null, plus
    ``style_distance`` (:func:`sedm.evaluation.style_gain.style_gain`) when the style table was given.

    Arm entries: mean / std / median / worst (min) of the per-patient macro Dice over tissue classes,
    mean per-patient macro IoU, patients with a finite macro Dice, and ``per_class`` (per class the
    same across-patient figures plus IQR and the Dice / IoU pooled over all pixels).
    """
    arms = {}
    for arm, df in per_patient.groupby(ARM, sort=False):
        d, j = describe(df[MACRO_DICE]), describe(df[MACRO_IOU])
        pooled_dice, pooled_iou = dice_iou(pooled[arm])
        per_class = {}
        for i, c in enumerate(classes):
            dc, jc = describe(df[class_column("dice", c)]), describe(df[class_column("iou", c)])
            per_class[c] = {"mean_dice": dc["mean"], "std_dice": dc["std"], "median_dice": dc["median"],
                            "iqr_dice": dc["iqr"], "worst_dice": dc["min"], "mean_iou": jc["mean"],
                            "pooled_dice": float(pooled_dice[i]), "pooled_iou": float(pooled_iou[i]),
                            "n_patients": dc["n"]}
        arms[str(arm)] = {"mean_dice": d["mean"], "std_dice": d["std"], "median_dice": d["median"],
                          "worst_dice": d["min"], "mean_iou": j["mean"], "n_patients": d["n"],
                          "per_class": per_class}
    out = {"unit": "patient", "arms": arms, "comparisons": comparisons}
    if style_distance is not None:
        out["style_distance"] = style_distance
    return _nan_to_none(out)


def summary_table(per_patient: pd.DataFrame, classes: Sequence[str], pooled: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Long table: arm x (class | macro) x (dice | iou) with n, mean, std, median, q1, q3, iqr, min, max, pooled."""
    rows = []
    for arm, df in per_patient.groupby(ARM, sort=False):
        pooled_scores = dict(zip(("dice", "iou"), dice_iou(pooled[arm])))
        for metric in ("dice", "iou"):
            for i, c in enumerate([*classes, "macro"]):
                col = {"dice": MACRO_DICE, "iou": MACRO_IOU}[metric] if c == "macro" else class_column(metric, c)
                p = macro(pooled_scores[metric]) if c == "macro" else float(pooled_scores[metric][i])
                rows.append({"arm": arm, "class": c, "metric": metric, **describe(df[col]), "pooled": p})
    return pd.DataFrame(rows)


def _write_table(df: pd.DataFrame, out: Path, name: str) -> None:
    for suffix in TABLE_SUFFIXES:
        with atomic_path(out / f"{name}{suffix}") as tmp:
            if suffix == ".parquet":
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)


def evaluate(cfg: Mapping[str, Any], *, samples: pd.DataFrame, predictions: Mapping[str, Mapping[str, Path]],
             stores: Sequence[Path], out: Path, styles: pd.DataFrame | None = None) -> dict[str, Any]:
    """Score every arm's predictions; write the tables and summary into ``out``; return the summary."""
    from sedm.tiling.store import open_checked

    classes, ev = list(cfg["classes"]), cfg["evaluation"]
    truth = {}
    for p in stores:
        store = open_checked(p, classes, samples.index)
        truth[store.slide_id] = store
    arms = list(predictions)
    slides = sorted(predictions[arms[0]]) if arms else []
    for arm in arms:
        if sorted(predictions[arm]) != slides:
            raise InputError(None, "--predictions", f"arm {arm!r} predicts slides {sorted(predictions[arm])}, "
                             f"arm {arms[0]!r} predicts {slides}", "predict the same test slides with every arm")
    missing = [s for s in slides if s not in truth]
    if missing:
        raise InputError(None, "--stores", f"no store for predicted slide(s) {missing}", "pass their stores")
    if styles is not None and (missing := sorted(set(slides) - set(styles[STYLE_SLIDE]))):
        raise InputError(None, "--styles", f"the style table has no row for test slide(s) {missing}",
                         "pass the table made from the same sample sheet")
    not_test = [s for s in slides if samples.at[s, "role"] != "test"]
    if not_test:
        log.warning("evaluating slides that are not marked test: %s", not_test)

    slide_rows, cms = [], {}
    for arm in arms:
        for slide in slides:
            cm = slide_confusion(truth[slide], predictions[arm][slide])
            cms[arm, slide] = cm
            slide_rows.append({ARM: arm, SLIDE: slide, PATIENT: samples.at[slide, "patient_id"],
                               **_scores(cm, classes)})
    per_slide = pd.DataFrame(slide_rows)

    patient_rows, pooled = [], {}
    k = len(classes)
    for arm in arms:
        pooled[arm] = np.zeros((k + 1, k + 1), np.int64)
        by_patient: dict[str, list[str]] = {}
        for slide in slides:
            by_patient.setdefault(samples.at[slide, "patient_id"], []).append(slide)
        for patient, its in sorted(by_patient.items()):
            cm = sum((cms[arm, s] for s in its), np.zeros((k + 1, k + 1), np.int64))
            pooled[arm] += cm
            patient_rows.append({ARM: arm, PATIENT: patient, "n_slides": len(its),
                                 "slides": ",".join(its), **_scores(cm, classes)})
    per_patient = pd.DataFrame(patient_rows)

    comparisons = []
    base = ev["baseline"]
    if len(arms) > 1 and base not in arms:
        raise InputError(None, "evaluation.baseline", f"baseline arm {base!r} is not among the evaluated arms {arms}",
                         "set evaluation.baseline to one of them")
    if base in arms:
        pivot = per_patient.pivot(index=PATIENT, columns=ARM, values=MACRO_DICE)
        for i, arm in enumerate(a for a in arms if a != base):
            comp = paired_comparison(pivot[arm].to_numpy(), pivot[base].to_numpy(), int(ev["n_boot"]),
                                     int(cfg["seed"]) + i)
            comparisons.append({"arm": arm, "baseline": base, "mean_diff": comp["mean_diff"], "ci95": comp["ci95"],
                                "wilcoxon_p": comp["wilcoxon_p"], "worst_diff": comp["worst_diff"],
                                "worst_ci95": comp["worst_ci95"], "n_patients": comp["n"],
                                "descriptive": comp["descriptive"], "note": comp["note"]})
    style_distance = None
    if styles is not None:
        style_distance, distances = style_gain(per_patient, styles, slides, base if base in arms else None,
                                               int(ev["n_boot"]), int(cfg["seed"]))
        for name, dist in distances.items():
            per_patient[distance_column(name)] = per_patient[PATIENT].map(dist)
    summary = summary_json(per_patient, classes, pooled, comparisons, style_distance)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(per_slide, out, PER_SLIDE)
    _write_table(per_patient, out, PER_PATIENT)
    with atomic_path(out / SUMMARY_CSV) as tmp:
        summary_table(per_patient, classes, pooled).to_csv(tmp, index=False)
    write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    for arm, s in summary["arms"].items():
        log.info("%s: per-patient macro Dice mean %s (worst %s) over %s patients", arm, s["mean_dice"],
                 s["worst_dice"], s["n_patients"])
    for comp in summary["comparisons"]:
        # a descriptive comparison is logged at WARNING: its CI and p read like evidence and are not
        log.log(logging.WARNING if comp["descriptive"] else logging.INFO,
                "%s - %s: mean per-patient difference %s, 95%% CI %s, Wilcoxon p %s over %s patients%s",
                comp["arm"], comp["baseline"], comp["mean_diff"], comp["ci95"], comp["wilcoxon_p"],
                comp["n_patients"], f" ({comp['note']})" if comp["note"] else "")
    return summary
