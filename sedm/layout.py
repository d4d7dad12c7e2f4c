"""Where each stage's outputs lie in the results folder (config key ``results``): one definition.

The workflow (``workflow/rules/common.smk``) builds its output paths from :data:`RESULTS`, and the
report (:mod:`sedm.report.layout`) finds the outputs by the same templates, so ``sedm report`` works on
a results folder without Snakemake and both always agree.
"""

from __future__ import annotations

from types import SimpleNamespace

RESULTS: dict[str, str] = {
    "stage_config": "config/{stage}.json",
    "arm_config": "config/segmentation/{arm}.json",  # a share sweep's per-arm snapshots (sedm.arms)
    "store": "tiles/{slide}.zarr",
    "tile_table": "tiles/{slide}.tiles.parquet",  # written with the store: later rules depend on the store
    "tissue_qc": "tiles/{slide}.qc.png",
    "tiling_summary": "tiles/summary.tsv",
    "autoencoder": "autoencoder/model",  # directory: diffusers AutoencoderKL + layout_decoder/
    "autoencoder_run": "autoencoder/run",  # directory: checkpoints, train_log.csv
    "autoencoder_qa": "autoencoder/qa.json",  # reconstruction PSNR/SSIM, stain OD error per slide
    "autoencoder_montage": "autoencoder/montage.png",  # rows: originals, autoencoder, layout decoder
    "diffusion_model": "diffusion/model",  # directory: config.json + weights (EMA)
    "diffusion_run": "diffusion/run",  # directory: checkpoints, train_log.csv, sample grids
    "style_check": "synthesis/style_check.json",  # sedm style-check: transfer ratio, encoder separability
    "style_grid": "synthesis/style_grid.png",  # rows = layouts, columns = unlabelled slides' styles
    "synthetic": "synthesis/{slide}.zarr",
    "synthesis_montage": "synthesis/{slide}.montage.png",
    "synthesis_stats": "synthesis/{slide}.stats.json",
    "memorisation": "synthesis/{slide}.memorisation.json",  # sedm near-copies: nearest labelled windows, near-copies
    "slide_style": "styles/{slide}.stats.json",  # sedm style-stats: whole-slide stain statistics (dask)
    "synthetic_style": "styles/synthetic/{slide}.stats.json",  # the same over a synthetic set
    "slide_embedding": "styles/{slide}.embedding.json",  # sedm style-embedding: the model's style vectors
    "style_table": "styles/cohort.tsv",  # sedm style-table: one row per slide and synthetic set
    "seg_model": "segmentation/{arm}/model",
    "seg_run": "segmentation/{arm}/run",
    "prediction": "predictions/{arm}/{slide}.zarr",
    "prediction_overlay": "predictions/{arm}/{slide}.overlay.png",
    "prediction_geojson": "predictions/{arm}/{slide}.geojson",
    "eval_dir": "eval",
    "layout_fidelity": "eval/layout_fidelity.json",  # sedm layout-fidelity: synthetic tiles vs their layouts
    "report_html": "report/report.html",  # not `report`: Snakemake's parser takes that for its keyword
    "report_figures": "report/figures",  # directory: <section>/<name>.png, for snakemake --report
    "cost_gain": "report/cost_gain.json",  # sedm report: per arm, compute seconds beside its Dice gain
    "bench": "benchmarks/{rule}/{name}.tsv",  # Snakemake benchmark files, one per job
}
"""Output path templates relative to the results folder; ``{slide}``, ``{arm}``, ... are wildcards."""


def results_paths(root: str) -> SimpleNamespace:
    """Every template of :data:`RESULTS` under the results folder ``root``, as attributes (e.g. ``.store``)."""
    return SimpleNamespace(**{name: f"{root}/{template}" for name, template in RESULTS.items()})
