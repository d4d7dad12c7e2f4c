"""The real workflow, run with Snakemake on a tiny generated cohort in a temporary directory."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from builders.workflow import REPO, edit_config, make_workdir, output, planned_jobs, read_sheet, snakemake
from sedm.tiling.store import SlideStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("wf"))
    snakemake(workdir, "results/tiles/summary.tsv")
    return workdir


def test_tiling_stage_runs_end_to_end(tiled):
    sheet = pd.read_csv(tiled / "samples.tsv", sep="\t", comment="#")
    summary = pd.read_csv(tiled / "results/tiles/summary.tsv", sep="\t")
    assert sorted(summary["slide_id"]) == sorted(sheet["slide_id"])
    for slide in sheet["slide_id"]:
        store = SlideStore(tiled / f"results/tiles/{slide}.zarr")
        assert store.mpp == 1.0 and store.tile_size == 128
        table = store.tiles()
        assert len(table) == summary.set_index("slide_id").loc[slide, "n_tiles"] > 0
        assert (tiled / f"results/tiles/{slide}.qc.png").stat().st_size > 0
        assert (tiled / f"results/benchmarks/tile_slide/{slide}.tsv").is_file()
        # the job's log lives in the results folder it explains (two results folders never share one)
        assert f"-> results/tiles/{slide}.zarr" in (tiled / f"results/logs/tile_slide/{slide}.log").read_text()
    labelled = sheet.loc[sheet["role"] == "labelled", "slide_id"].iloc[0]
    assert SlideStore(tiled / f"results/tiles/{labelled}.zarr").tiles()["frac_tumour"].sum() > 0


def test_second_run_does_nothing(tiled):
    proc = snakemake(tiled, "results/tiles/summary.tsv", "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_tiling_change_reruns_tiling_not_demo(tiled, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiled, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["tiling"]["min_tissue_fraction"] = 0.5
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(work, "results/tiles/summary.tsv", "--dry-run", "--quiet", "rules")
    text = proc.stdout
    n_slides = len(pd.read_csv(work / "samples.tsv", sep="\t", comment="#"))
    assert "tile_slide" in text and "tiling_summary" in text and "demo_cohort" not in text
    counts = {line.split()[0]: int(line.split()[1]) for line in text.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["tile_slide"] == n_slides


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_find_sedm_without_it_on_path(tiled, tmp_path):
    """Under `--sdm conda` the rule env has sedm's dependencies but no `sedm` command: the workflow's
    shell prefix then runs this checkout's package with the env's Python (here: a PATH holding only python).

    `python` is a script that runs this interpreter by its own path, not a symlink to it: a Python started
    through a symlink outside its virtualenv does not find the venv (no pyvenv.cfg beside the link), so
    the test would fail in a venv for a reason that has nothing to do with the workflow."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    seen = subprocess.run([bin_dir / "python", "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert seen.stdout.strip() == sys.prefix  # the same environment, venv or not
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    if shutil.which("sedm", path=path):
        pytest.skip("a system-wide sedm is on /usr/bin")
    target = tiled / "results/config/evaluation.json"
    target.unlink(missing_ok=True)
    proc = snakemake(tiled, str(target.relative_to(tiled)), env={"PATH": path})
    assert "Finished jobid" in proc.stdout + proc.stderr
    assert yaml.safe_load(target.read_text())["evaluation"]["baseline"] == "real"


def test_segmentation_on_several_gpus_is_an_error(tiled):
    """Segmentation has no DDP: a profile asking for two GPUs fails before any job runs."""
    proc = snakemake(tiled, "--dry-run", "--forceall", "--set-resources", "train_segmentation:gpu=2", check=False)
    assert proc.returncode != 0
    assert "segmentation training and prediction use one GPU" in proc.stdout + proc.stderr


def test_dry_run_catches_what_would_fail_late(tmp_path):
    """A baseline naming no arm, or a test patient with a labelled slide: `snakemake -n` fails, naming the fix."""
    work = make_workdir(tmp_path / "w")
    edit_config(work, "evaluation", baseline="realistic")
    proc = snakemake(work, "--dry-run", check=False)
    assert proc.returncode != 0 and "evaluation.baseline" in proc.stdout + proc.stderr
    edit_config(work, "evaluation", baseline="real")
    sheet = read_sheet(work)
    test = sheet.index[sheet["role"] == "test"][0]
    sheet.loc[test, "patient_id"] = sheet.loc[sheet["role"] == "labelled", "patient_id"].iloc[0]
    sheet.to_csv(work / "samples.tsv", sep="\t", index=False)
    proc = snakemake(work, "--dry-run", check=False)
    assert proc.returncode != 0 and "have labelled and test slides" in proc.stdout + proc.stderr


def test_slide_style_is_its_own_job_rerun_only_with_its_store(tiled, tmp_path):
    """Stain statistics of one slide: computed from its store alone, untouched by other config sections,
    rerun when the store is re-tiled; the evaluation waits for the cohort style table."""
    work = tmp_path / "w"
    shutil.copytree(tiled, work, symlinks=True)
    slide = pd.read_csv(work / "samples.tsv", sep="\t", comment="#")["slide_id"].iloc[0]
    target = f"results/styles/{slide}.stats.json"
    snakemake(work, target)
    stats = json.loads((work / target).read_text())
    assert stats["slide_id"] == slide and stats["tissue_pixels"] > 0 and stats["kind"] == "slide"
    edit_config(work, "styles", embedding_patches=8)
    edit_config(work, "segmentation", lr=0.0123)
    assert "Nothing to be done" in output(snakemake(work, target, "--dry-run"))
    edit_config(work, "tiling", min_tissue_fraction=0.5)
    assert planned_jobs(output(snakemake(work, target, "--dry-run", "--quiet", "rules"))) == {
        "stage_config": 1, "tile_slide": 1, "slide_style": 1}
    shell = output(snakemake(work, "results/eval/summary.json", "--dry-run", "--printshellcmds"))
    assert "--styles results/styles/cohort.tsv" in shell and "sedm style-table" in shell
