# Config and sample-sheet validation (at parse time, through sedm.config so the CLI gives the same
# errors), output paths in one place, and the per-stage config snapshots.
import json

from sedm.config import stage_config, validate_config, load_samples
from sedm.errors import InputError

try:
    config = validate_config(config, workflow.configfiles[0] if workflow.configfiles else None)
    SAMPLES = load_samples(config["samples"])
except InputError as exc:
    raise WorkflowError(str(exc)) from None

R = config["results"]
SLIDES = SAMPLES.index.tolist()
ROLE = SAMPLES["role"].to_dict()
LABELLED = [s for s in SLIDES if ROLE[s] == "labelled"]
UNLABELLED = [s for s in SLIDES if ROLE[s] == "unlabelled"]
TEST = [s for s in SLIDES if ROLE[s] == "test"]
ENV = "../../envs/sedm.yaml"


wildcard_constraints:
    slide="|".join(SLIDES),
    stage=r"[a-z_]+",


class paths:
    """Every output path of the workflow, so rules never spell one by hand."""

    stage_config = R + "/config/{stage}.json"
    store = R + "/tiles/{slide}.zarr"
    tile_table = R + "/tiles/{slide}.tiles.parquet"
    tissue_qc = R + "/tiles/{slide}.qc.png"
    tiling_summary = R + "/tiles/summary.tsv"
    diffusion_model = R + "/diffusion/model"  # directory: config.json + weights (EMA)
    diffusion_run = R + "/diffusion/run"  # directory: checkpoints, train_log.csv, sample grids
    synthetic = R + "/synthesis/{slide}.zarr"
    synthesis_montage = R + "/synthesis/{slide}.montage.png"
    seg_model = R + "/segmentation/{arm}/model"
    seg_run = R + "/segmentation/{arm}/run"
    prediction = R + "/predictions/{arm}/{slide}.zarr"
    prediction_overlay = R + "/predictions/{arm}/{slide}.overlay.png"
    prediction_geojson = R + "/predictions/{arm}/{slide}.geojson"
    eval_dir = R + "/eval"
    report = R + "/report/report.html"
    log = "logs/{rule}/{name}.log"
    bench = R + "/benchmarks/{rule}/{name}.tsv"


def stage_cfg(stage):
    return paths.stage_config.format(stage=stage)


def log_for(rule_name, name="{slide}"):
    return paths.log.format(rule=rule_name, name=name)


def bench_for(rule_name, name="{slide}"):
    return paths.bench.format(rule=rule_name, name=name)


def slide_input(wildcards):
    return SAMPLES.loc[wildcards.slide, "slide_path"]


def annotation_input(wildcards):
    path = SAMPLES.loc[wildcards.slide, "annotation_path"]
    return [path] if path else []


def final_targets():
    return [paths.tiling_summary]


rule stage_config:
    output:
        paths.stage_config,
    params:
        snapshot=lambda w: json.dumps(stage_config(config, w.stage), sort_keys=True),
    log:
        log_for("stage_config", "{stage}"),
    conda:
        ENV
    shell:
        "sedm write-config --stage {wildcards.stage:q} --json {params.snapshot:q} --out {output:q} 2> {log:q}"
