"""Confusion matrices and the Dice / IoU derived from them.

Conventions, defined here once:

* Confusion matrices are (K+1) x (K+1) int64, rows = ground truth label, columns = predicted label,
  index = label value (sedm.labels). Row 0 (unannotated ground truth) is always zero: those pixels
  are excluded. Column 0 counts annotated pixels the prediction left unlabelled (outside its
  tissue mask): they are false negatives of their true class and false positives of none.
* Matrices add up: a patient's matrix is the sum of its slides', the pooled one the sum of all.
* Dice_c = 2 TP / (2 TP + FP + FN), IoU_c = TP / (TP + FP + FN). A class absent from both the
  ground truth and the prediction (TP + FP + FN = 0) gets NaN, not 0 (nothing was wrong) and not 1
  (nothing was right); NaN classes are left out of that unit's macro mean, which is the mean over
  the tissue classes 1..K (label 0 is never a class). A unit with all classes NaN has macro NaN.
"""

from __future__ import annotations

import numpy as np

from sedm.labels import UNANNOTATED


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
