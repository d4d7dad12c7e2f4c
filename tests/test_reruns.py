"""Only what changed reruns: real Snakemake runs of the whole tiny pipeline, counting the jobs executed.

Each stage depends on its own config snapshot (results/config/<stage>.json, rule stage_config, whose
params are the stage's sections plus the sedm version); the report's snapshot holds the whole config
because the report prints it, and the report reruns whenever anything upstream does anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections import Counter
from pathlib import Path

import pytest
import yaml

from builders.workflow import (add_sheet_row, edit_config, executed_jobs, make_workdir, output, planned_jobs,
                               planned_wildcards, read_sheet, snakemake)
from sedm.config import STAGE_SECTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """The tiny pipeline run to completion once; the tests below change it in order."""
    work = make_workdir(tmp_path_factory.mktemp("reruns"))
    (work / "first_run.log").write_text(output(snakemake(work, "--quiet", "rules")))
    return work


def cohort(work: Path) -> dict[str, int]:
    sheet = read_sheet(work)
    roles = sheet["role"].value_counts()
    arms = yaml.safe_load((work / "config.yaml").read_text())["segmentation"]["arms"]
    return {"slides": len(sheet), "test": int(roles.get("test", 0)), "unlabelled": int(roles.get("unlabelled", 0)),
            "arms": len(arms)}


def style_jobs(n: dict[str, int], check: bool = True) -> dict[str, int]:
    """The style measures' jobs: style_check needs two unlabelled slides, layout_fidelity one;
    near_copies (the memorisation check) runs per synthetic set. ``check``: also the jobs that rerun
    only with synthesis (style_check, near_copies), not with segmentation."""
    jobs = {"layout_fidelity": 1} if n["unlabelled"] else {}
    if check and n["unlabelled"] > 1:
        jobs["style_check"] = 1
    if check and n["unlabelled"]:
        jobs["near_copies"] = n["unlabelled"]
    return jobs


def styles_jobs(n: dict[str, int]) -> dict[str, int]:
    """The styles stage's jobs: stain statistics per slide and the cohort table; with a diffusion model
    (an unlabelled slide) also per synthetic set and the style embedding per slide."""
    jobs = {"slide_style": n["slides"], "style_table": 1}
    if n["unlabelled"]:
        jobs.update({"synthetic_style": n["unlabelled"], "style_embedding": n["slides"]})
    return jobs


def generative_jobs(n: dict[str, int]) -> dict[str, int]:
    """The generative model's training jobs: the cohort autoencoder (diffusion.latent: cohort, as the demo)
    and the diffusion model, both only with an unlabelled slide to synthesise for."""
    return {"train_autoencoder": 1, "train_diffusion": 1} if n["unlabelled"] else {}


def rerun(work: Path) -> Counter:
    """Jobs a dry run plans and a real run then executes (they must agree)."""
    planned = planned_jobs(output(snakemake(work, "--dry-run", "--quiet", "rules")))
    executed = executed_jobs(output(snakemake(work, "--quiet", "rules")))
    assert executed == planned
    return executed


def test_first_run_executes_every_stage_with_a_benchmark(done):
    n = cohort(done)
    jobs = executed_jobs((done / "first_run.log").read_text())
    assert jobs == {"stage_config": len(STAGE_SECTIONS), "demo_cohort": n["slides"], "tile_slide": n["slides"],
                    "tiling_summary": 1, **generative_jobs(n), "synthesize": n["unlabelled"],
                    "train_segmentation": n["arms"], "predict_slide": n["arms"] * n["test"], "evaluate": 1, "report": 1,
                    **style_jobs(n), **styles_jobs(n)}
    # every rule but the instant stage_config writes a benchmark, and the report's compute table lists them
    bench = done / "results/benchmarks"
    assert {p.name for p in bench.iterdir()} == set(jobs) - {"stage_config"}
    for rule, count in jobs.items():
        if rule != "stage_config":
            assert len(list((bench / rule).rglob("*.tsv"))) == count, rule
    html = (done / "results/report/report.html").read_text()
    for rule in set(jobs) - {"stage_config", "report"}:
        assert rule in html
    # the tiny config matches stains (synthesis.stain_match 1): fidelity has the restained reference
    fidelity = json.loads((done / "results/eval/layout_fidelity.json").read_text())
    assert 0 <= fidelity["restained_real_val_macro_dice"] <= 1
    assert set(fidelity["restained_real_per_slide"]) == set(fidelity["per_slide"])
    assert "restained like the synthetic ones" in html
    # and the autoencoder ceiling, each decoder's reconstructions beside their texture on the original colour
    assert set(fidelity["autoencoder"]["macro_dice"]) == {"original", "autoencoder", "layout_decoder",
                                                          "autoencoder_texture", "layout_decoder_texture"}


def test_nothing_changed_reruns_nothing(done):
    text = output(snakemake(done, "--quiet", "rules"))
    assert executed_jobs(text) == Counter()
    assert "Nothing to be done" in text


def test_runtime_only_change_reruns_nothing_but_reaches_the_commands(done):
    """Threads, memory, device, workers, checkpoint cadence (sedm.config.RUNTIME_KEYS): e.g. more memory
    after an out-of-memory kill on the cluster must not retrain anything."""
    edit_config(done, "diffusion", mem_mb=4000, checkpoint_every=7, log_every=3)
    edit_config(done, "segmentation", num_workers=1, device="cpu", mem_mb=5000)
    edit_config(done, "synthesis", device="cpu")
    text = output(snakemake(done, "--dry-run"))
    assert "Nothing to be done" in text, text[-2000:]
    # the values still reach the commands (as --runtime), e.g. when the report is rebuilt
    shell = output(snakemake(done, "--dry-run", "--printshellcmds", "--forcerun", "report", "--until", "report"))
    tokens = shlex.split(shell[shell.index("sedm report"):].splitlines()[0])
    runtime = json.loads(tokens[tokens.index("--runtime") + 1])
    assert runtime["diffusion"]["checkpoint_every"] == 7 and runtime["segmentation"]["num_workers"] == 1
    assert runtime["synthesis"]["device"] == "cpu"


def test_segmentation_change_reruns_segmentation_prediction_evaluation_report(done):
    n = cohort(done)
    edit_config(done, "segmentation", lr=0.002)
    assert rerun(done) == {"stage_config": 2, "train_segmentation": n["arms"], "predict_slide": n["arms"] * n["test"],
                           "evaluate": 1, "report": 1, **style_jobs(n, check=False)}
    assert json.loads((done / "results/config/segmentation.json").read_text())["segmentation"]["lr"] == 0.002


def test_tiling_change_reruns_everything_downstream_of_tiling_not_the_demo(done):
    n = cohort(done)
    edit_config(done, "tiling", min_tissue_fraction=0.1)
    assert rerun(done) == {"stage_config": 2, "tile_slide": n["slides"], "tiling_summary": 1, **generative_jobs(n),
                           "synthesize": n["unlabelled"], "train_segmentation": n["arms"],
                           "predict_slide": n["arms"] * n["test"], "evaluate": 1, "report": 1, **style_jobs(n),
                           **styles_jobs(n)}
    assert "Nothing to be done" in output(snakemake(done, "--dry-run"))


# ---- sample-sheet edits: only the jobs that read the changed rows (dry runs; the sheet is put back)
@contextlib.contextmanager
def sheet_edited(work: Path):
    """Restores the sample sheet afterwards, timestamp included, so the next test finds the run finished."""
    sheet = work / "samples.tsv"
    text, stat = sheet.read_text(), sheet.stat()
    try:
        yield
    finally:
        sheet.write_text(text)
        os.utime(sheet, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def arms_by_kind(work: Path) -> tuple[list[str], list[str]]:
    """(arms with synthetic data, arms without)."""
    arms = yaml.safe_load((work / "config.yaml").read_text())["segmentation"]["arms"]
    return [a for a, c in arms.items() if c["synthetic"]], [a for a, c in arms.items() if not c["synthetic"]]


def test_new_unlabelled_slide_retrains_the_generative_model_and_the_synthetic_arms_only(done):
    """The cohort autoencoder trains on the unlabelled slides too (their stains must decode faithfully),
    so a new one retrains it, the diffusion model on its latents, and everything drawn from them; not
    the arms that never read unlabelled slides (real, stain_aug): neither their models nor their predictions."""
    n, (synthetic, real) = cohort(done), arms_by_kind(done)
    sheet = read_sheet(done)
    test = sheet.query("role == 'test'")["slide_id"].tolist()
    unlabelled = sheet.query("role == 'unlabelled'")["slide_id"].tolist() + ["U99"]
    slides = sheet["slide_id"].tolist() + ["U99"]
    assert synthetic and real and test
    with sheet_edited(done):
        add_sheet_row(done, "U99", "U99", "unlabelled")
        jobs = planned_wildcards(output(snakemake(done, "--dry-run")))
    new = "slide=U99"
    assert jobs == Counter({("demo_cohort", new): 1, ("tile_slide", new): 1, ("tiling_summary", ""): 1,
                            ("train_autoencoder", ""): 1, ("train_diffusion", ""): 1,
                            **{(rule, f"slide={u}"): 1 for u in unlabelled
                               for rule in ("synthesize", "near_copies", "synthetic_style")},
                            ("style_check", ""): 1, ("layout_fidelity", ""): 1,
                            # its stain statistics; every slide's style vectors (the model changed)
                            ("slide_style", new): 1, **{("style_embedding", f"slide={s}"): 1 for s in slides},
                            ("style_table", ""): 1,
                            **{("train_segmentation", f"arm={a}"): 1 for a in synthetic},
                            **{("predict_slide", f"arm={a}, slide={t}"): 1 for a in synthetic for t in test},
                            ("evaluate", ""): 1, ("report", ""): 1})
    assert not [job for job in jobs for a in real if f"arm={a}" in job[1]]
    assert n["unlabelled"] + 1 > 1  # hence the style check, which needs two unlabelled slides
    assert "Nothing to be done" in output(snakemake(done, "--dry-run"))


def test_autoencoder_on_labelled_slides_only_does_not_read_the_unlabelled_ones(done):
    """autoencoder.unlabelled_fraction: 0 keeps new style sources zero-shot: the autoencoder job then
    neither reads nor depends on the unlabelled stores."""
    unlabelled = read_sheet(done).query("role == 'unlabelled'")["slide_id"].tolist()
    config = (done / "config.yaml").read_text()
    try:
        edit_config(done, "autoencoder", unlabelled_fraction=0.0)
        shell = output(snakemake(done, "--dry-run", "--printshellcmds", "--until", "train_autoencoder"))
    finally:
        (done / "config.yaml").write_text(config)
    command = next(line for line in shell.splitlines() if "sedm train-autoencoder" in line)
    assert "--unlabelled-stores" not in command and not [u for u in unlabelled if f"{u}.zarr" in command]


def test_new_test_slide_is_tiled_predicted_and_evaluated_without_retraining(done):
    synthetic, real = arms_by_kind(done)
    with sheet_edited(done):
        add_sheet_row(done, "T99", "T99", "test")
        jobs = planned_wildcards(output(snakemake(done, "--dry-run")))
    new = "slide=T99"
    assert jobs == Counter({("demo_cohort", new): 1, ("tile_slide", new): 1, ("tiling_summary", ""): 1,
                            ("slide_style", new): 1, ("style_embedding", new): 1, ("style_table", ""): 1,
                            **{("predict_slide", f"arm={a}, {new}"): 1 for a in synthetic + real},
                            ("evaluate", ""): 1, ("report", ""): 1})
    assert "Nothing to be done" in output(snakemake(done, "--dry-run"))


def test_sheet_edit_that_changes_no_row_reruns_nothing(done):
    with sheet_edited(done):
        with open(done / "samples.tsv", "a") as fh:
            fh.write("# reviewed by the pathologist\n")
        assert "Nothing to be done" in output(snakemake(done, "--dry-run"))
