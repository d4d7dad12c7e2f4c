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
        {"transfer": {"median": transfer, "min": transfer / 2}, "separability": {"trained": 2.0, "random_init": 0.1}}))
    (root / "eval" / "layout_fidelity.json").write_text(json.dumps({"macro_dice": 0.5, "real_val_macro_dice": 0.8}))
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
