"""Confusion matrices and the Dice / IoU derived from them.

Conventions, defined here once:

* Confusion matrices are (K+1) x (K+1) int64, rows = ground truth label, columns = predicted label,
  index = label value (sedm.labels). Row 0 (unannotated ground truth) is always zero: those pixels
  are excluded. Column 0 counts annotated pixels the prediction left unlabelled (outside its
  tissue mask): they are false negatives of their true class and false positives of none.
* Matrices add up: a patient's matrix is the sum of its slides', the pooled one the sum of all.
* Written to tables (:func:`confusion_record`) as JSON keyed so the orientation reads from the cell
  itself: ``{"true_<class>": {"pred_unannotated": n, "pred_<class>": n, ...}, ...}``, one entry per
  annotated (truth) class, each with a count per predicted label.
* Dice_c = 2 TP / (2 TP + FP + FN), IoU_c = TP / (TP + FP + FN). A class absent from both the
  ground truth and the prediction (TP + FP + FN = 0) gets NaN, not 0 (nothing was wrong) and not 1
  (nothing was right); NaN classes are left out of that unit's macro mean, which is the mean over
  the tissue classes 1..K (label 0 is never a class). A unit with all classes NaN has macro NaN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sedm.labels import UNANNOTATED

TRUE_PREFIX, PRED_PREFIX = "true_", "pred_"
"""Key prefixes of a written confusion matrix: rows are the annotation (truth), columns the prediction."""
UNANNOTATED_NAME = "unannotated"
"""Name of label value 0 in a written confusion matrix (prediction left outside tissue)."""


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K+1, K+1) counts of (truth, pred) label pairs over annotated pixels (truth != 0)."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    n = n_classes + 1
    keep = truth != UNANNOTATED
    t = truth[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.max() >= n or p.max() >= n):
        raise ValueError(f"label values must be < {n}")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def tp_fp_fn(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class 1..K: true positives, false positives, false negatives (each shape (K,))."""
    cm = np.asarray(cm, dtype=np.int64).copy()
    cm[UNANNOTATED, :] = 0
    tp = np.diag(cm)[1:]
    fp = cm[:, 1:].sum(axis=0) - tp
    fn = cm[1:, :].sum(axis=1) - tp
    return tp, fp, fn


def dice_iou(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU (shape (K,)) from a confusion matrix; NaN for absent classes."""
    tp, fp, fn = (x.astype(np.float64) for x in tp_fp_fn(cm))
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    return dice, iou


def macro(values: np.ndarray) -> float:
    """Mean over the classes that are not NaN; NaN when every class is."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def confusion_labels(classes: Sequence[str]) -> list[str]:
    """Names of the label values 0..K of a confusion matrix: unannotated, then the classes."""
    return [UNANNOTATED_NAME, *classes]


def confusion_record(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{"true_<class>": {"pred_<label>": pixels}}`` of a (K+1) x (K+1) matrix (module docstring);
    the unannotated truth row, always zero, is left out."""
    names = confusion_labels(classes)
    return {TRUE_PREFIX + names[t]: {PRED_PREFIX + names[p]: int(cm[t, p]) for p in range(len(names))}
            for t in range(len(names)) if t != UNANNOTATED}


def read_confusion(value: Any, classes: Sequence[str] | None = None) -> tuple[list[str], np.ndarray] | None:
    """(label names, (K+1) x (K+1) int64 matrix) from a table cell of :func:`confusion_record` (JSON
    text or the mapping), or from an older bare nested list (its names: ``classes`` when they fit, else
    the label values); None when the cell is not a confusion matrix."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, Mapping):
        rows = {str(k).removeprefix(TRUE_PREFIX): v for k, v in value.items() if str(k).startswith(TRUE_PREFIX)}
        if not rows or not all(isinstance(v, Mapping) for v in rows.values()):
            return None
        names = confusion_labels([n for n in rows if n != UNANNOTATED_NAME])
        cm = np.zeros((len(names), len(names)), np.int64)
        for t, row in rows.items():
            for key, count in row.items():
                p = str(key).removeprefix(PRED_PREFIX)
                if p in names:
                    cm[names.index(t), names.index(p)] = int(count)
        return names, cm
    try:
        cm = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        return None
    names = confusion_labels(classes) if classes is not None and len(classes) + 1 == len(cm) else \
        [str(v) for v in range(len(cm))]
    return names, cm
