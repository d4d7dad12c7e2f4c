# Config and sample-sheet validation (at parse time, through sedm.config so `sedm validate` gives the
# same errors), output paths in one place, and the per-stage config snapshots.
import hashlib
import json
import os
import sys
from pathlib import Path

from sedm.config import (STAGE_SECTIONS, check_cohort, cohort_warnings, load_samples, require_samples,
                         runtime_config, stage_config, validate_config)
from sedm.errors import InputError
from sedm.evaluation.outputs import OUTPUT_FILES as EVAL_FILES, PER_PATIENT, PER_SLIDE, SUMMARY_JSON
from sedm.layout import results_paths
from sedm.arms import arm_variants, swept_shares
from sedm.validate import check_inputs

# The checks of `sedm validate`, on the config Snakemake resolved (the --configfile, --config on top):
# every mistake stops the run here, before the first job and in `snakemake -n`, with the same message.
CONFIG_FILE = ", ".join(map(str, workflow.configfiles)) or None
try:
    config = validate_config(config, CONFIG_FILE)
    SAMPLES = load_samples(require_samples(config, CONFIG_FILE))
    check_cohort(config, SAMPLES, CONFIG_FILE)
    for warning in cohort_warnings(config, SAMPLES) + check_inputs(config, SAMPLES, config["samples"])[0]:
        print(f"sedm: warning: {warning}", file=sys.stderr)
except InputError as exc:
    raise WorkflowError(str(exc)) from None

# Jobs run the sedm installed beside the Python that runs Snakemake: its bin folder goes first on the PATH
# the jobs inherit, as activating its virtualenv would, so a `sedm` or `python` found first on PATH (another
# install, the system's) is never used. Jobs under --use-conda activate their own environment over it.
envvars:
    "PATH",


JOB_PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
os.environ["PATH"] = JOB_PATH

R = config["results"]
SLIDES = SAMPLES.index.tolist()
ROLE = SAMPLES["role"].to_dict()


def workflow_path(path):
    """A sheet's (absolute) path as the rules spell it: relative to the working directory when inside
    it, so that the demo's slides match the demo rule's outputs and moving the project reruns nothing."""
    rel = os.path.relpath(path) if path else path
    return rel if path and not rel.startswith("..") else path


SLIDE_PATH = {s: workflow_path(p) for s, p in SAMPLES["slide_path"].items()}  # plain dicts: input functions
ANNOTATION_PATH = {s: workflow_path(p) for s, p in SAMPLES["annotation_path"].items()}  # run once per job
SHEET_ROW = {s: {**row, "slide_path": SLIDE_PATH[s], "annotation_path": ANNOTATION_PATH[s]}
             for s, row in SAMPLES.to_dict("index").items()}
LABELLED = [s for s in SLIDES if ROLE[s] == "labelled"]
UNLABELLED = [s for s in SLIDES if ROLE[s] == "unlabelled"]
TEST = [s for s in SLIDES if ROLE[s] == "test"]
# The arms trained, by name: segmentation.arms, each synthetic one once per share of a sweep (stedm-s040)
ARM_VARIANTS = arm_variants(config["segmentation"])
ARMS = list(ARM_VARIANTS)
SWEEP = swept_shares(config["segmentation"]) is not None
ENV = "../../envs/sedm.yaml"


wildcard_constraints:
    slide="|".join(SLIDES),
    stage=r"[a-z_]+",


# Output paths: the results layout is defined once, in sedm.layout (the report reads by it too).
paths = results_paths(R)
paths.demo_slide = f"{config['demo']['out']}/slides/{{slide}}.tiff"
paths.demo_annotation = f"{config['demo']['out']}/annotations/{{slide}}.geojson"
# Logs live with the results they explain: two results folders (seeds, configs) never share a log.
paths.log = f"{R}/logs/{{rule}}/{{name}}.log"


# Runtime-only settings (sedm.config.RUNTIME_KEYS: threads, memory, device, checkpoint cadence, ...)
# are not in the snapshots; a rule hands their current values to its command as the resource
# `sedm_runtime` (`--runtime {resources.sedm_runtime:q}`). Resources are no rerun trigger, so changing
# them reruns nothing; a string resource is neither counted nor passed to SLURM.
RUNTIME = {stage: json.dumps(runtime_config(config, stage), sort_keys=True) for stage in STAGE_SECTIONS}


def stage_cfg(stage):
    return paths.stage_config.format(stage=stage)


def seg_config(arm):
    """The segmentation snapshot arm ``arm`` is trained and predicts with. One synthetic share: the stage's
    snapshot, as before sweeps existed (their results stay up to date). A sweep: the arm's own
    (sedm.arms.arm_snapshot), so adding a share leaves every other arm's snapshot as it is."""
    return paths.arm_config.format(arm=arm) if SWEEP else stage_cfg("segmentation")


def log_for(rule_name, name="{slide}"):
    return paths.log.format(rule=rule_name, name=name)


def bench_for(rule_name, name="{slide}"):
    return paths.bench.format(rule=rule_name, name=name)


# Rules that read the sample sheet take it as `ancient` input (its timestamp ignored: adding a slide
# must not rerun a model whose slides did not change) and the rows they read as the param `rows`
# (sheet_rows): Snakemake's params trigger then reruns them exactly when one of those rows changes.
def sample_sheet():
    return ancient(config["samples"])


def sheet_rows(slides):
    """A digest of the sheet rows of ``slides``, in sheet order (a few bytes in Snakemake's metadata
    where the rows themselves would be a cohort's sheet per job)."""
    rows = json.dumps([[s, SHEET_ROW[s]] for s in slides], sort_keys=True)
    return hashlib.sha256(rows.encode()).hexdigest()


def slide_input(wildcards):
    return SLIDE_PATH[wildcards.slide]


def annotation_input(wildcards):
    path = ANNOTATION_PATH[wildcards.slide]
    return [path] if path else []


def eval_files(*names):
    return [os.path.join(paths.eval_dir, name) for name in names]


def final_targets():
    """The report (and its cost beside gain), and everything it summarises; evaluation only when there are
    test slides."""
    return [paths.tiling_summary, paths.diffusion_model, paths.report_html, paths.cost_gain] + (
        eval_files(SUMMARY_JSON) if TEST else [])


def synthesis_runs():
    """The diffusion model is trained (and synthesis runs) only when an arm uses synthetic data."""
    return bool(UNLABELLED) and any(arm["synthetic"] for arm in config["segmentation"]["arms"].values())


def style_table_inputs(wildcards):
    """Every slide's stain statistics; with a diffusion model also the synthetic sets' and the
    slides' style embeddings."""
    inputs = {"samples": sample_sheet(), "stats": expand(paths.slide_style, slide=SLIDES)}
    if synthesis_runs():
        inputs["synthetic"] = expand(paths.synthetic_style, slide=UNLABELLED)
        inputs["embeddings"] = expand(paths.slide_embedding, slide=SLIDES)
    return inputs


def report_inputs(wildcards):
    """What the report waits for: one file or folder per stage, not each of the hundreds of QC
    thumbnails, montages and overlays it also shows. Those come from the same jobs as files listed
    here or upstream of them (tile tables -> tiling summary; synthesis -> synthetic arms' models;
    overlays -> predictions -> evaluation), so order and reruns are the same, and the DAG of a large
    cohort builds much faster."""
    inputs = {
        "samples": sample_sheet(),
        "config": stage_cfg("report"),
        "tiling_summary": paths.tiling_summary,
        "seg_models": expand(paths.seg_model, arm=ARMS),
        "styles": paths.style_table,
    }
    if synthesis_runs():
        # the diffusion model (and the cohort autoencoder) is trained only when an arm uses synthetic data
        inputs["diffusion_model"] = paths.diffusion_model
        if config["diffusion"]["latent"] == "cohort":
            inputs["autoencoder_qa"] = paths.autoencoder_qa
        if len(UNLABELLED) > 1:
            inputs["style_check"] = paths.style_check
        inputs["layout_fidelity"] = paths.layout_fidelity
        inputs["memorisation"] = expand(paths.memorisation, slide=UNLABELLED)
    if TEST:
        inputs["eval"] = eval_files(SUMMARY_JSON, f"{PER_PATIENT}.csv", f"{PER_SLIDE}.csv")
    return inputs
