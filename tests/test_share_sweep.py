"""Synthetic share as a DAG dimension, and cost beside gain.

A list in segmentation.synthetic_fraction turns each synthetic arm into one arm per share; reruns must
stay exact (adding a share trains only its arms: real Snakemake runs on the tiny cohort, jobs counted),
and one number must keep the names and the snapshot results made before sweeps existed depend on. Each
arm's compute, from benchmark files, beside its Dice gain over the baseline is checked against values
worked out by hand, and the report must draw both figures.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from builders.report import visible_text, write_benchmark, write_samples, write_summary
from builders.workflow import (edit_config, flat_config, make_workdir, output, planned_jobs, planned_wildcards,
                               read_sheet, snakemake)
from sedm.cli import main
from sedm.config import STAGE_SECTIONS, check_cohort, load_samples, validate_config
from sedm.errors import InputError
from sedm.evaluation.stats import paired_comparison
from sedm.report.build import build_report
from sedm.report.cost import DICE_POINT, SHARED_RULES, cost_gain
from sedm.report.layout import ResultsLayout
from sedm.arms import arm_variants, swept_shares, variant_name

CLASSES = {"classes": ["tumour"]}
SHARES = [0.4]
"""The sweep the tiny pipeline first runs with."""
ADDED_SHARE = 0.8
"""The share added to it afterwards."""
SYNTHETIC_ARM = "stedm"
"""The tiny config's (.test/config.yaml) arm with synthetic data; its other arm, real, is the baseline."""


# ------------------------------------------------------------------------------------------ names
def test_variant_names_carry_the_share_and_need_no_quoting():
    assert variant_name("stedm", 0.4) == "stedm-s040"
    assert variant_name("stedm_stain_aug", 0.0) == "stedm_stain_aug-s000"
    assert variant_name("stedm", 0.05) == "stedm-s005"
    assert variant_name("stedm", 0.29) == "stedm-s029"  # 0.29 * 100 is 28.999999999999996 in floats
    seg = validate_config({**CLASSES, "segmentation": {"synthetic_fraction": [0.8, 0.0, 0.4]}})["segmentation"]
    variants = arm_variants(seg)
    assert list(variants) == ["real", "stain_aug", "stedm-s000", "stedm-s040", "stedm-s080",
                              "stedm_stain_aug-s000", "stedm_stain_aug-s040", "stedm_stain_aug-s080"]
    for name in variants:  # a folder, a Snakemake wildcard value and a shell word as it is
        assert re.fullmatch(r"[a-z][a-z0-9_]*(-s\d{3})?", name) and shlex.quote(name) == name
    s040 = variants["stedm-s040"]
    assert (s040.family, s040.share, s040.swept, s040.synthetic) == ("stedm", 0.4, True, True)
    assert (variants["real"].share, variants["real"].swept) == (0.0, False)


def test_a_sweep_takes_whole_percents_below_one_each_once(tmp_path):
    with pytest.raises(InputError, match="not a whole percent"):
        arm_variants(validate_config({**CLASSES, "segmentation": {"synthetic_fraction": [0.4, 0.405]}})["segmentation"])
    for bad in ([0.4, 1.0], [0.4, 0.4], []):
        with pytest.raises(InputError) as exc:
            validate_config({**CLASSES, "segmentation": {"synthetic_fraction": bad}})
        assert exc.value.field == "segmentation.synthetic_fraction"
    # the evaluation baseline names a trained arm: a swept arm only by its share
    sheet = write_samples(tmp_path)
    config = validate_config({**CLASSES, "samples": str(sheet), "evaluation": {"baseline": SYNTHETIC_ARM},
                              "segmentation": {"synthetic_fraction": SHARES}})
    with pytest.raises(InputError, match=r"stedm-s040"):
        check_cohort(config, load_samples(sheet))


def test_one_share_keeps_the_arm_names_and_the_stage_snapshot(tmp_path):
    """Results made before sweeps existed stay up to date: one number gives the same arm names, the same
    training commands and the stage's one snapshot, so no job's input, params or command changes."""
    seg = validate_config(CLASSES)["segmentation"]
    variants = arm_variants(seg)
    assert swept_shares(seg) is None and list(variants) == list(seg["arms"])
    assert variants[SYNTHETIC_ARM].share == seg["synthetic_fraction"] and not any(v.swept for v in variants.values())
    work = make_workdir(tmp_path / "one")
    text = output(snakemake(work, "--dry-run", "--printshellcmds"))
    jobs = planned_jobs(text)
    assert "arm_config" not in jobs and jobs["stage_config"] == len(STAGE_SECTIONS)
    commands = [shlex.split(line.split(":", 1)[1]) for line in text.splitlines()
                if line.startswith("Shell command: sedm train-seg")]
    arms = yaml.safe_load((work / "config.yaml").read_text())["segmentation"]["arms"]
    assert sorted(c[c.index("--arm") + 1] for c in commands) == sorted(arms)
    assert {c[c.index("--config") + 1] for c in commands} == {"results/config/segmentation.json"}


# ------------------------------------------------------------------------- reruns (real workflow)
@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """The tiny pipeline run to completion once with a sweep of :data:`SHARES`."""
    work = make_workdir(tmp_path_factory.mktemp("sweep"), segmentation={"synthetic_fraction": SHARES})
    snakemake(work, "--quiet", "rules")
    return work


@contextlib.contextmanager
def config_edited(work: Path):
    """Puts the config back afterwards, so the next test finds the run finished."""
    text = (work / "config.yaml").read_text()
    try:
        yield
    finally:
        (work / "config.yaml").write_text(text)


def arms_of(work: Path) -> list[str]:
    config = yaml.safe_load((work / "config.yaml").read_text())
    return list(arm_variants(validate_config({**CLASSES, "segmentation": config["segmentation"]})["segmentation"]))


@pytest.mark.slow
def test_a_sweep_trains_one_arm_per_share_from_its_own_snapshot(swept):
    names = arms_of(swept)
    assert names == ["real", *(variant_name(SYNTHETIC_ARM, s) for s in SHARES)]
    for name in names:
        meta = json.loads((swept / f"results/segmentation/{name}/model/config.json").read_text())
        snap = json.loads((swept / f"results/config/segmentation/{name}.json").read_text())["segmentation"]
        assert meta["arm"] == name and list(snap["arms"]) == [meta["arm_family"]]
    first = variant_name(SYNTHETIC_ARM, SHARES[0])
    snap = json.loads((swept / f"results/config/segmentation/{first}.json").read_text())
    assert snap["segmentation"]["synthetic_fraction"] == [SHARES[0]]
    assert json.loads((swept / f"results/segmentation/{first}/model/config.json").read_text())[
        "synthetic_share"] == SHARES[0]
    assert "Nothing to be done" in output(snakemake(swept, "--dry-run"))


@pytest.mark.slow
def test_adding_a_share_trains_only_its_arm(swept):
    test = read_sheet(swept).query("role == 'test'")["slide_id"].tolist()
    new = variant_name(SYNTHETIC_ARM, ADDED_SHARE)
    with config_edited(swept):
        edit_config(swept, "segmentation", synthetic_fraction=[*SHARES, ADDED_SHARE])
        jobs = planned_wildcards(output(snakemake(swept, "--dry-run")))
    assert jobs == Counter({("arm_config", f"arm={new}"): 1, ("train_segmentation", f"arm={new}"): 1,
                            **{("predict_slide", f"arm={new}, slide={t}"): 1 for t in test},
                            ("evaluate", ""): 1, ("stage_config", "stage=report"): 1, ("report", ""): 1})
    assert "Nothing to be done" in output(snakemake(swept, "--dry-run"))


@pytest.mark.slow
def test_any_other_segmentation_change_still_retrains_every_arm(swept):
    """The per-arm snapshots hold the whole segmentation section but the other arms and shares."""
    n_arms, n_test = len(arms_of(swept)), int((read_sheet(swept)["role"] == "test").sum())
    with config_edited(swept):
        edit_config(swept, "segmentation", lr=0.002)
        jobs = planned_jobs(output(snakemake(swept, "--dry-run", "--quiet", "rules")))
    assert jobs == Counter({"arm_config": n_arms, "train_segmentation": n_arms, "predict_slide": n_arms * n_test,
                            "layout_fidelity": 1, "evaluate": 1, "stage_config": 1, "report": 1})


@pytest.mark.slow
def test_the_run_reports_cost_beside_gain(swept):
    results = swept / "results"
    data = json.loads((results / "report/cost_gain.json").read_text())
    assert list(data["arms"]) == arms_of(swept) and data["baseline"] == "real"
    swept_arm = data["arms"][variant_name(SYNTHETIC_ARM, SHARES[0])]
    bench = results / "benchmarks"
    seconds = {rule: sum(pd.read_csv(p, sep="\t")["s"].sum() for p in (bench / rule).glob("*.tsv"))
               for rule in SHARED_RULES}
    own = pd.read_csv(bench / f"train_segmentation/{variant_name(SYNTHETIC_ARM, SHARES[0])}.tsv", sep="\t")["s"].sum()
    assert swept_arm["wall_s"] == pytest.approx(own + sum(seconds.values()))
    assert swept_arm["descriptive"] and swept_arm["n_patients"] == read_sheet(swept).query("role == 'test'")[
        "patient_id"].nunique()
    folder = results / "report/figures"
    figures = {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
    assert {"cost/gain_vs_share.png", "cost/gain_vs_cost.png"} <= figures


# ---------------------------------------------------------------------------- cost beside gain
# Benchmark seconds (wall, CPU) per rule and job. U1 is the fixture sheet's one unlabelled slide; U9 is a
# synthesis job of a slide no longer in the sheet, which no arm is charged for.
BENCH = {("train_autoencoder", "model"): (100.0, 90.0), ("train_diffusion", "model"): (200.0, 380.0),
         ("synthesize", "U1"): (50.0, 45.0), ("synthesize", "U9"): (1000.0, 1000.0),
         ("train_segmentation", "real"): (10.0, 9.0), ("train_segmentation", "stedm-s040"): (12.0, 11.0),
         ("train_segmentation", "stedm-s080"): (14.0, 13.0), ("predict_slide", "stedm-s040/T1"): (5.0, 5.0)}
ARMS = {"real": {"synthetic": False, "stain_aug": False}, SYNTHETIC_ARM: {"synthetic": True, "stain_aug": False}}
COMPARISONS = [  # as sedm evaluate writes them, over 3 patients
    {"arm": "stedm-s040", "baseline": "real", "mean_diff": 0.05, "ci95": [0.01, 0.09], "wilcoxon_p": 0.25,
     "worst_diff": 0.02, "worst_ci95": [-0.01, 0.04], "n_patients": 3, "descriptive": True, "note": "descriptive"},
    {"arm": "stedm-s080", "baseline": "real", "mean_diff": -0.01, "ci95": [-0.03, 0.01], "wilcoxon_p": 0.75,
     "worst_diff": 0.04, "worst_ci95": [0.0, 0.06], "n_patients": 3, "descriptive": True, "note": "descriptive"},
]
# By hand: shared = autoencoder 100 + diffusion 200 + synthesis of U1 50 = 350 s (CPU 90 + 380 + 45 = 515),
# charged in full to both synthetic arms.
#   stedm-s040: 12 + 350 = 362 s (CPU 526); mean gain 0.05 = 5 points -> 72.4 s a point; worst 0.02 -> 181 s
#   stedm-s080: 14 + 350 = 364 s (CPU 528); mean gain below 0 -> none; worst 0.04 = 4 points -> 91 s a point
#   real: 10 s, nothing shared; the baseline: gain 0 by definition, no seconds per point
EXPECTED = {"stedm-s040": (362.0, 526.0, 72.4, 181.0), "stedm-s080": (364.0, 528.0, None, 91.0),
            "real": (10.0, 9.0, None, None)}


@pytest.fixture
def fixture_results(tmp_path):
    results = tmp_path / "results"
    for (rule, job), (wall, cpu) in BENCH.items():
        write_benchmark(results, rule, job, wall, cpu)
    arms = {name: {"mean_dice": 0.7, "worst_dice": 0.5, "n_patients": 3} for name in EXPECTED}
    write_summary(results, arms, COMPARISONS)
    sheet = write_samples(tmp_path)
    config = validate_config({**CLASSES, "samples": str(sheet), "results": str(results),
                              "diffusion": {"latent": "cohort"},
                              "segmentation": {"arms": ARMS, "synthetic_fraction": [0.4, ADDED_SHARE]}})
    return config, load_samples(sheet), results, sheet


def test_seconds_per_dice_point_by_hand(fixture_results):
    config, samples, results, _ = fixture_results
    data = cost_gain(config, samples, ResultsLayout(results))
    assert data["dice_point"] == DICE_POINT and data["baseline"] == "real"
    assert data["shared"]["wall_s"] == pytest.approx(350.0)
    assert data["shared"]["rules"]["synthesize"]["files"] == ["benchmarks/synthesize/U1.tsv"]
    for name, (wall, cpu, per_point, per_worst_point) in EXPECTED.items():
        arm = data["arms"][name]
        assert arm["wall_s"] == pytest.approx(wall) and arm["cpu_s"] == pytest.approx(cpu), name
        assert arm["mean"]["seconds_per_point"] == pytest.approx(per_point), name
        assert arm["worst"]["seconds_per_point"] == pytest.approx(per_worst_point), name
    s040 = data["arms"]["stedm-s040"]
    assert (s040["family"], s040["share"], s040["shared_s"], s040["segmentation_s"]) == ("stedm", 0.4, 350.0, 12.0)
    assert s040["mean"]["ci95"] == [0.01, 0.09] and s040["worst"]["ci95"] == [-0.01, 0.04]
    assert s040["descriptive"] and "3 patients" in s040["note"]
    assert data["arms"]["real"]["baseline"] and data["arms"]["real"]["shared_s"] == 0.0
    # a job without its benchmark file: no total, so no seconds per point, and the file named
    (results / "benchmarks/train_segmentation/stedm-s080.tsv").unlink()
    s080 = cost_gain(config, samples, ResultsLayout(results))["arms"]["stedm-s080"]
    assert s080["wall_s"] is None and s080["worst"]["seconds_per_point"] is None
    assert s080["missing"] == ["benchmarks/train_segmentation/stedm-s080.tsv"]


def test_worst_patient_gain_and_its_ci_by_hand():
    """Two patients: arm (0.9, 0.5), baseline (0.8, 0.6). Worst patients 0.5 and 0.6: gain -0.1. Resampling
    two patients: both the first (probability 1/4) gives 0.9 - 0.8 = 0.1, any draw holding the second
    gives 0.5 - 0.6 = -0.1 (3/4): the 95% CI is [-0.1, 0.1]."""
    comp = paired_comparison(np.array([0.9, 0.5]), np.array([0.8, 0.6]), 2000, 0)
    assert comp["worst_diff"] == pytest.approx(-0.1)
    assert comp["worst_ci95"] == pytest.approx([-0.1, 0.1])


def test_report_draws_gain_vs_share_and_gain_vs_cost(fixture_results, tmp_path):
    config, samples, results, sheet = fixture_results
    html, figures = build_report(config, samples, results)
    assert {f.name for f in figures if f.section == "cost"} == {"gain_vs_share", "gain_vs_cost"}
    section = re.search(r'<section id="cost">(.*?)</section>', html, flags=re.S).group(1)
    row = re.search(r"<tr><td>stedm-s040</td>(.*?)</tr>", section).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells == ["stedm", "0.40", "12", "350", "362", "0.050 [0.010, 0.090]", "72.4",
                     "0.020 [-0.010, 0.040]", "181", "3", "descriptive"]
    assert "charged in full" in visible_text(section)
    # the workflow's command writes the same numbers as JSON beside the report
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "report"
    assert main(["report", "--config", str(cfg), "--samples", str(sheet), "--results", str(results),
                 "--out", str(out / "report.html"), "--cost-gain", str(out / "cost_gain.json")]) == 0
    assert json.loads((out / "cost_gain.json").read_text()) == cost_gain(config, samples, ResultsLayout(results))


# ------------------------------------------------------------------------------------------- study
def test_study_config_is_the_demo_config_with_a_sweep(repo):
    """`--configfile` uses exactly the file given, so the study repeats every demo value; what it changes
    is the results folder, the arms and the sweep of at least four shares from 0 to 0.8."""
    study = yaml.safe_load((repo / "resources/study/config.yaml").read_text())
    demo = yaml.safe_load((repo / "config.yaml").read_text())
    config = validate_config(study)
    shares = swept_shares(config["segmentation"])
    assert len(shares) >= 4 and shares[0] == 0.0 and shares[-1] == 0.8
    assert {"real", "stain_aug", "stedm", "stedm_stain_aug"} <= set(config["segmentation"]["arms"])
    assert study["results"] != demo["results"]
    changed = ("results",), ("segmentation", "synthetic_fraction")
    kept = {k: v for k, v in flat_config(study).items() if k not in changed and k[:2] != ("segmentation", "arms")}
    assert kept == {k: v for k, v in flat_config(demo).items() if k not in changed and k[:2] != ("segmentation", "arms")}
