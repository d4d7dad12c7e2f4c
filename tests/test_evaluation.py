"""Per-patient evaluation against values worked out by hand; statistics against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from builders import evaluation as builders
from builders.segmentation import write_samples

from sedm.cli import main
from sedm.config import load_samples, validate_config
from sedm.errors import InputError
from sedm.evaluation.evaluate import evaluate, parse_predictions
from sedm.evaluation.outputs import OUTPUT_FILES
from sedm.evaluation.metrics import confusion_matrix, dice_iou, macro
from sedm.evaluation.stats import bootstrap_ci, describe, paired_comparison, wilcoxon_p

CLASSES = ["a", "b", "c"]

# Hand example: 2 patients; P1 has slides s1 and s2, P2 has s3. Each slide is 2 x 4 px (row-major).
TRUTH = {"s1": [1, 1, 1, 1, 2, 2, 0, 0], "s2": [1, 1, 2, 2, 2, 2, 0, 0], "s3": [1, 1, 3, 3, 3, 3, 2, 0]}
PRED_A = {"s1": [1, 1, 1, 2, 2, 2, 2, 1], "s2": [1, 2, 2, 2, 2, 0, 3, 3], "s3": [1, 3, 3, 3, 3, 1, 2, 2]}
# (truth, pred) pairs over annotated pixels (truth 0 dropped):
#   s1: (1,1) x3, (1,2) x1, (2,2) x2
#   s2: (1,1) x1, (1,2) x1, (2,2) x3, (2,0) x1   [pred 3 only on unannotated pixels: not counted]
#   P1 = s1 + s2: (1,1) 4, (1,2) 2, (2,2) 5, (2,0) 1
#     a: TP 4, FP 0, FN 2 -> Dice 8/10 = 0.8,       IoU 4/6 = 0.666667
#     b: TP 5, FP 2, FN 1 -> Dice 10/13 = 0.769231, IoU 5/8 = 0.625
#     c: absent from truth and prediction -> NaN (left out of P1's macro)
#     macro Dice (0.8 + 10/13) / 2 = 0.784615, macro IoU (2/3 + 5/8) / 2 = 0.645833
#   s3 = P2: (1,1) 1, (1,3) 1, (3,3) 3, (3,1) 1, (2,2) 1
#     a: TP 1, FP 1, FN 1 -> Dice 2/4 = 0.5, IoU 1/3
#     b: TP 1, FP 0, FN 0 -> Dice 1, IoU 1
#     c: TP 3, FP 1, FN 1 -> Dice 6/8 = 0.75, IoU 3/5 = 0.6
#     macro Dice (0.5 + 1 + 0.75) / 3 = 0.75, macro IoU (1/3 + 1 + 0.6) / 3 = 0.644444
#   across patients: mean (0.784615 + 0.75) / 2 = 0.767308, std (ddof 1) 0.034615 / sqrt(2) = 0.024477,
#   median 0.767308, worst 0.75, mean IoU (0.645833 + 0.644444) / 2 = 0.645139
#   pooled (P1 + P2): a TP 5 FP 1 FN 3 -> 10/14; b TP 6 FP 2 FN 1 -> 12/15; c TP 3 FP 1 FN 1 -> 0.75
P1_DICE, P2_DICE = (0.8 + 10 / 13) / 2, 0.75
P1_IOU, P2_IOU = (2 / 3 + 5 / 8) / 2, (1 / 3 + 1 + 0.6) / 3
# Arm "perfect" predicts every annotated pixel right (and class 1 elsewhere): macro Dice 1 for both
# patients, so perfect - A = (1 - 0.784615, 1 - 0.75) = (0.215385, 0.25), mean 0.232692; both
# positive, so the exact two-sided Wilcoxon p with n = 2 is 2 * (1/4) = 0.5; bootstrap means of two
# patients take the values 0.215385, 0.232692, 0.25 with prob. 1/4, 1/2, 1/4 -> 95% CI = [0.215385, 0.25].


def _arr(values):
    return np.asarray(values, np.uint8).reshape(2, 4)


def write_truth(path, slide_id, truth):
    return builders.write_truth(path, slide_id, _arr(truth), CLASSES)


def write_prediction(path, slide_id, pred):
    return builders.write_prediction(path, slide_id, _arr(pred), CLASSES)


@pytest.fixture
def hand(tmp_path):
    samples = write_samples(tmp_path / "samples.tsv", [("s1", "P1", "test"), ("s2", "P1", "test"),
                                                       ("s3", "P2", "test")])
    stores = [write_truth(tmp_path / "tiles" / f"{s}.zarr", s, t) for s, t in TRUTH.items()]
    arms = {"A": PRED_A, "perfect": {s: [v or 1 for v in t] for s, t in TRUTH.items()}, "same": PRED_A}
    for arm, preds in arms.items():
        for s, p in preds.items():
            write_prediction(tmp_path / "pred" / arm / f"{s}.zarr", s, p)
    return tmp_path, samples, stores


def test_confusion_and_scores_of_one_patient():
    cm = sum(confusion_matrix(_arr(TRUTH[s]), _arr(PRED_A[s]), 3) for s in ("s1", "s2"))
    assert cm[0].sum() == 0  # unannotated truth excluded
    assert cm[1, 1] == 4 and cm[1, 2] == 2 and cm[2, 2] == 5 and cm[2, 0] == 1 and cm.sum() == 12
    dice, iou = dice_iou(cm)
    assert dice[:2] == pytest.approx([0.8, 10 / 13]) and iou[:2] == pytest.approx([4 / 6, 5 / 8])
    assert math.isnan(dice[2]) and math.isnan(iou[2])
    assert macro(dice) == pytest.approx(P1_DICE)
    assert math.isnan(macro([float("nan")] * 3))


def test_evaluate_matches_hand_computation(hand):
    tmp, samples, stores = hand
    cfg = validate_config({"classes": CLASSES, "seed": 0, "evaluation": {"baseline": "A", "n_boot": 1000}})
    preds = parse_predictions([f"A={tmp / 'pred' / 'A'}", f"perfect={tmp / 'pred' / 'perfect'}"])
    summary = evaluate(cfg, samples=load_samples(samples), predictions=preds, stores=stores, out=tmp / "eval")

    pp = pd.read_parquet(tmp / "eval" / "per_patient.parquet")
    a = pp[pp.arm == "A"].set_index("patient_id")
    assert a.loc["P1", "n_slides"] == 2 and a.loc["P2", "n_slides"] == 1
    assert a.loc["P1", "dice_a"] == pytest.approx(0.8) and a.loc["P1", "dice_b"] == pytest.approx(10 / 13)
    assert math.isnan(a.loc["P1", "dice_c"]) and a.loc["P2", "dice_c"] == pytest.approx(0.75)
    assert a["macro_dice"].tolist() == pytest.approx([P1_DICE, P2_DICE])
    assert a["macro_iou"].tolist() == pytest.approx([P1_IOU, P2_IOU])
    # the confusion cell names its orientation: P1's (truth a, pred b) = 2 and (truth b, pred unannotated) = 1
    cm = json.loads(pd.read_csv(tmp / "eval" / "per_patient.csv").set_index(["arm", "patient_id"]).loc[
        ("A", "P1"), "confusion"])
    assert cm == {"true_a": {"pred_unannotated": 0, "pred_a": 4, "pred_b": 2, "pred_c": 0},
                  "true_b": {"pred_unannotated": 1, "pred_a": 0, "pred_b": 5, "pred_c": 0},
                  "true_c": {"pred_unannotated": 0, "pred_a": 0, "pred_b": 0, "pred_c": 0}}
    ps = pd.read_csv(tmp / "eval" / "per_slide.csv")
    assert len(ps) == 6 and set(ps.slide_id) == {"s1", "s2", "s3"}
    s1 = ps[(ps.arm == "A") & (ps.slide_id == "s1")].iloc[0]
    assert s1["dice_a"] == pytest.approx(6 / 7) and s1["dice_b"] == pytest.approx(4 / 5)  # 2*3/(6+1), 2*2/(4+1)

    arm = summary["arms"]["A"]
    assert arm["mean_dice"] == pytest.approx((P1_DICE + P2_DICE) / 2)
    assert arm["std_dice"] == pytest.approx(abs(P1_DICE - P2_DICE) / math.sqrt(2))
    assert arm["median_dice"] == pytest.approx((P1_DICE + P2_DICE) / 2)
    assert arm["worst_dice"] == pytest.approx(0.75)
    assert arm["mean_iou"] == pytest.approx((P1_IOU + P2_IOU) / 2)
    assert arm["n_patients"] == 2
    c = arm["per_class"]["c"]
    assert c["mean_dice"] == pytest.approx(0.75) and c["n_patients"] == 1 and c["std_dice"] is None
    assert [arm["per_class"][k]["pooled_dice"] for k in CLASSES] == pytest.approx([10 / 14, 12 / 15, 0.75])
    assert summary["arms"]["perfect"]["mean_dice"] == pytest.approx(1.0)

    (comp,) = summary["comparisons"]
    assert comp["arm"] == "perfect" and comp["baseline"] == "A"
    assert comp["mean_diff"] == pytest.approx(((1 - P1_DICE) + (1 - P2_DICE)) / 2)
    assert comp["wilcoxon_p"] == pytest.approx(0.5)
    assert comp["ci95"] == pytest.approx([1 - P1_DICE, 1 - P2_DICE])
    assert comp["descriptive"] and "descriptive: 2 patients" in comp["note"]  # 2 patients describe, not prove

    table = pd.read_csv(tmp / "eval" / "summary.csv")
    macro_row = table[(table.arm == "A") & (table["class"] == "macro") & (table.metric == "dice")].iloc[0]
    assert macro_row["iqr"] == pytest.approx(abs(P1_DICE - P2_DICE) / 2)  # quartiles of 2 values
    assert macro_row["pooled"] == pytest.approx((10 / 14 + 12 / 15 + 0.75) / 3)


def test_summary_json_shape_and_nulls(hand):
    tmp, samples, stores = hand
    cfg = validate_config({"classes": CLASSES, "evaluation": {"baseline": "A", "n_boot": 200}})
    preds = parse_predictions([f"A={tmp / 'pred' / 'A'}", f"same={tmp / 'pred' / 'same'}"])
    evaluate(cfg, samples=load_samples(samples), predictions=preds, stores=stores, out=tmp / "eval")
    assert all((tmp / "eval" / name).is_file() for name in OUTPUT_FILES)
    text = (tmp / "eval" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert set(summary) == {"unit", "arms", "comparisons"} and summary["unit"] == "patient"
    for arm in summary["arms"].values():
        assert set(arm) == {"mean_dice", "std_dice", "median_dice", "worst_dice", "mean_iou", "n_patients",
                            "per_class"}
        assert set(arm["per_class"]) == set(CLASSES)
    (comp,) = summary["comparisons"]
    assert {"arm", "baseline", "mean_diff", "ci95", "wilcoxon_p"} <= set(comp)
    # identical predictions: every paired difference is 0 -> no Wilcoxon p, and a note saying why
    assert comp["mean_diff"] == 0 and comp["ci95"] == [0, 0]
    assert comp["wilcoxon_p"] is None and "zero" in comp["note"]


def test_wilcoxon_and_bootstrap_on_hand_example():
    d = np.array([0.1, 0.2, -0.05, 0.3, 0.15])
    # |d| ranks: 0.05 -> 1, 0.1 -> 2, 0.15 -> 3, 0.2 -> 4, 0.3 -> 5; W- = 1 (the only negative).
    # Exact null: 2^5 = 32 equally likely sign patterns; P(W- <= 1) = 2/32 (W- = 0 or W- = 1),
    # so the two-sided p = 2 * 2/32 = 0.125.
    p, note = wilcoxon_p(d)
    assert p == pytest.approx(0.125) and note is None
    assert p == pytest.approx(sps.wilcoxon(d).pvalue)
    lo, hi = bootstrap_ci(d, n_boot=5000, seed=0)
    ref = sps.bootstrap((d,), np.mean, n_resamples=5000, method="percentile", rng=np.random.default_rng(1))
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.02)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.02)
    assert lo < d.mean() < hi and d.min() <= lo and hi <= d.max()
    assert bootstrap_ci(d, 5000, seed=0) == (lo, hi)  # seeded
    # undefined cases: NaN plus a note, never an exception
    assert math.isnan(wilcoxon_p(np.array([0.2]))[0]) and "2 patients" in wilcoxon_p(np.array([0.2]))[1]
    assert math.isnan(wilcoxon_p(np.zeros(4))[0])
    comp = paired_comparison(np.array([0.9, np.nan, 0.7]), np.array([0.8, 0.5, 0.6]), 100, 0)
    assert comp["n"] == 2 and comp["mean_diff"] == pytest.approx(0.1)  # the NaN patient is dropped


def test_describe_ignores_nan():
    s = describe([0.5, float("nan"), 0.7, 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7) and s["min"] == 0.5
    assert s["iqr"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.2)
    assert math.isnan(describe([float("nan")])["mean"])


def test_mismatched_arms_and_cli(hand, capsys):
    tmp, samples, stores = hand
    cfg = validate_config({"classes": CLASSES, "evaluation": {"baseline": "A"}})
    preds = parse_predictions([f"A={tmp / 'pred' / 'A'}", f"B={tmp / 'pred' / 'perfect' / 's1.zarr'}"])
    with pytest.raises(InputError, match="same test slides"):
        evaluate(cfg, samples=load_samples(samples), predictions=preds, stores=stores, out=tmp / "eval")
    import yaml

    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"classes": CLASSES, "evaluation": {"baseline": "real"}}))
    args = ["evaluate", "--config", str(cfg_path), "--samples", str(samples), "--stores", *map(str, stores),
            "--out", str(tmp / "eval")]
    # baseline 'real' is not among the arms
    assert main([*args, "--predictions", f"A={tmp / 'pred' / 'A'}", f"B={tmp / 'pred' / 'same'}"]) == 2
    assert "baseline" in capsys.readouterr().err
    # explicit per-slide predictions, as the workflow passes them
    explicit = [f"real={tmp / 'pred' / 'A' / f'{s}.zarr'}" for s in TRUTH]
    assert main([*args, "--predictions", *explicit]) == 0
    assert json.loads((tmp / "eval" / "summary.json").read_text())["comparisons"] == []


def test_evaluate_with_style_table_adds_distances_and_correlations(hand):
    from sedm.styles.features import FEATURES

    tmp, samples, stores = hand
    cfg = validate_config({"classes": CLASSES, "seed": 0, "evaluation": {"baseline": "A", "n_boot": 200}})
    preds = parse_predictions([f"A={tmp / 'pred' / 'A'}", f"perfect={tmp / 'pred' / 'perfect'}"])
    feats = {"L1": [0.0, 0.0], "L2": [1.0, 0.0], "s1": [0.0, 1.0], "s2": [2.0, 1.0], "s3": [4.0, 2.0]}
    rows = [{"slide_id": s, "patient_id": {"s1": "P1", "s2": "P1", "s3": "P2"}.get(s, "PL"),
             "role": "labelled" if s.startswith("L") else "test", "kind": "slide", "tissue_pixels": 1,
             **dict.fromkeys(FEATURES, 0.3), **dict(zip(FEATURES, v))} for s, v in feats.items()]
    styles = pd.DataFrame(rows)
    summary = evaluate(cfg, samples=load_samples(samples), predictions=preds, stores=stores, out=tmp / "eval",
                       styles=styles)
    entry = summary["style_distance"]["spaces"]["stain"]
    assert set(entry["patients"]) == {"P1", "P2"} and entry["patients"]["P2"] > entry["patients"]["P1"]
    assert entry["arms"]["perfect"]["gain"]["n"] == 2 and "gain" not in entry["arms"]["A"]
    assert summary["style_distance"]["baseline"] == "A"
    pp = pd.read_parquet(tmp / "eval" / "per_patient.parquet").set_index(["arm", "patient_id"])
    assert pp.loc[("A", "P2"), "stain_style_distance"] == pytest.approx(entry["patients"]["P2"])
    # a table without one of the evaluated slides: one clear error before anything is computed or written
    with pytest.raises(InputError, match=r"no row for test slide\(s\) \['s3'\]"):
        evaluate(cfg, samples=load_samples(samples), predictions=preds, stores=stores, out=tmp / "eval2",
                 styles=styles[styles["slide_id"] != "s3"])
    assert not (tmp / "eval2").exists()
