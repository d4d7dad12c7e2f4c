"""Names of the files and columns ``sedm evaluate`` writes: the workflow and the report import them."""

from __future__ import annotations

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PER_PATIENT = "per_patient"
PER_SLIDE = "per_slide"
TABLE_SUFFIXES = (".parquet", ".csv")
"""Each table is written in both formats; readers prefer the first."""
OUTPUT_FILES = (SUMMARY_JSON, SUMMARY_CSV, *(name + suffix for name in (PER_PATIENT, PER_SLIDE)
                                             for suffix in TABLE_SUFFIXES))
"""Every file of the output folder."""

# columns of the per-slide and per-patient tables (plus dice_<class> / iou_<class> per class)
ARM, SLIDE, PATIENT = "arm", "slide_id", "patient_id"
MACRO_DICE, MACRO_IOU = "macro_dice", "macro_iou"
CONFUSION = "confusion"
"""The summed confusion matrix as JSON text that names its orientation,
``{"true_<class>": {"pred_<label>": pixels}}`` (:func:`sedm.evaluation.metrics.confusion_record`)."""


def class_column(metric: str, class_name: str) -> str:
    """``dice_<class>`` / ``iou_<class>``."""
    return f"{metric}_{class_name}"
