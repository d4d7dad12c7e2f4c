"""benchmarks/demo_seeds.py summarises finished demo runs: spread over seeds, last line JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("demo_seeds")


def _results(root, real, stedm, transfer):
    (root / "eval").mkdir(parents=True)
    (root / "synthesis").mkdir()
    arms = {"real": {"mean_dice": real, "worst_dice": real - 0.2, "std_dice": 0.1},
            "stedm": {"mean_dice": stedm, "worst_dice": stedm - 0.1, "std_dice": 0.05}}
    (root / "eval" / "summary.json").write_text(json.dumps({"arms": arms}))
    (root / "synthesis" / "style_check.json").write_text(json.dumps(
        {"transfer": {"median": transfer, "min": transfer / 2}, "separability": {"trained": 2.0, "random_init": 0.1},
         "transfer_learned": {"median": transfer / 4}, "transfer_learned_random_init": {"median": 0.01}}))
    (root / "eval" / "layout_fidelity.json").write_text(json.dumps({"macro_dice": 0.5, "real_val_macro_dice": 0.8,
                                                                          "restained_real_val_macro_dice": 0.6}))
    return root


def test_summary_over_seeds(bench, tmp_path, capsys):
    folders = [_results(tmp_path / f"r{i}", real, stedm, t)
               for i, (real, stedm, t) in enumerate([(0.5, 0.6, 0.4), (0.7, 0.6, 0.6), (0.6, 0.9, 0.8)])]
    assert bench.main(["--results", *map(str, folders)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    real = out["arms"]["real"]["mean_dice"]
    assert real["mean"] == pytest.approx(0.6) and real["sd"] == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert (real["min"], real["max"]) == (0.5, 0.7)
    assert out["arms"]["stedm"]["worst_dice"]["mean"] == pytest.approx(0.6)
    assert out["style"]["transfer_median"]["values"] == [0.4, 0.6, 0.8]
    assert out["style"]["fidelity_synthetic"]["mean"] == pytest.approx(0.5)
    assert out["style"]["fidelity_real_restained"]["mean"] == pytest.approx(0.6)
    assert out["style"]["transfer_learned_median"]["values"] == [0.1, 0.15, 0.2]


def _study(root, dice):
    """A study results folder: per arm (mean, worst, sd across patients), synthetic arms named stedm*."""
    (root / "eval").mkdir(parents=True)
    (root / "report").mkdir()
    arms = {arm: {"mean_dice": m, "worst_dice": w, "std_dice": sd} for arm, (m, w, sd) in dice.items()}
    (root / "eval" / "summary.json").write_text(json.dumps({"arms": arms}))
    (root / "report" / "cost_gain.json").write_text(json.dumps(
        {"arms": {arm: {"synthetic": arm.startswith("stedm"), "wall_s": 10.0} for arm in dice}}))
    return root


def test_study_winners_and_the_best_baseline(bench, tmp_path, capsys):
    """The best baseline is the one with the highest mean over seeds (not the best of each seed); synthetic arms
    are compared with it paired by seed, and ahead only where strictly above."""
    seeds = [  # macenko wins seed 0 on the mean, stain_aug wins on the average over seeds
        {"real": (0.60, 0.40, 0.10), "stain_aug": (0.70, 0.50, 0.20), "macenko": (0.72, 0.45, 0.15),
         "stedm-s020": (0.75, 0.50, 0.05)},
        {"real": (0.50, 0.30, 0.10), "stain_aug": (0.80, 0.60, 0.20), "macenko": (0.60, 0.55, 0.15),
         "stedm-s020": (0.70, 0.60, 0.08)},
    ]
    folders = [_study(tmp_path / f"s{i}", d) for i, d in enumerate(seeds)]
    assert bench.main(["--results", *map(str, folders)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["winners"]["mean_dice"] == {"s0": ["stedm-s020"], "s1": ["stain_aug"]}
    assert out["winners"]["std_dice"] == {"s0": ["stedm-s020"], "s1": ["stedm-s020"]}
    vs = out["versus_best_baseline"]
    assert vs["baseline"] == "stain_aug"
    row = vs["arms"]["stedm-s020"]
    assert row["mean_dice"]["values"] == pytest.approx([0.05, -0.10])
    assert row["mean_dice"]["seeds_ahead"] == 1
    assert row["worst_dice"]["values"] == pytest.approx([0.0, 0.0]) and row["worst_dice"]["seeds_ahead"] == 0
    assert "| stedm-s020 | +0.050 ± 0.000 [0.050–0.050]" not in captured.err  # the arm table shows Dice, not gains
    assert "| stedm-s020 | 0.725 ± 0.035 [0.700–0.750]" in captured.err


def test_no_baseline_comparison_without_cost_files(bench, tmp_path, capsys):
    """Demo folders from before cost_gain.json existed do not say which arms are synthetic: no comparison is made."""
    folders = [_results(tmp_path / f"r{i}", 0.5, 0.6, 0.4) for i in range(2)]
    assert bench.main(["--results", *map(str, folders)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["versus_best_baseline"] is None
