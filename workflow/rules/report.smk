# The HTML report over everything above, plus its figures as PNGs for `snakemake --report`.
# The report reads stage outputs by the fixed results layout (sedm/report/layout.py); the inputs
# below only make it wait for them. Benchmark files are read too but are no rule's output.
import os


report: "../report/workflow.rst"


def report_inputs(wildcards):
    """Every output the report shows that this workflow's DAG produces."""
    arms = config["segmentation"]["arms"]
    synthetic = bool(UNLABELLED) and any(arm["synthetic"] for arm in arms.values())
    inputs = {
        "samples": config["samples"],
        "config": stage_cfg("report"),
        "tiling_summary": paths.tiling_summary,
        "qc": expand(paths.tissue_qc, slide=SLIDES),
        "seg_models": expand(paths.seg_model, arm=list(arms)),
    }
    if synthetic:  # the diffusion model is trained only when an arm uses synthetic data
        inputs["diffusion_model"] = paths.diffusion_model
        inputs["montages"] = expand(paths.synthesis_montage, slide=UNLABELLED)
        inputs["synthesis_stats"] = expand(paths.synthesis_stats, slide=UNLABELLED)
    if TEST:
        inputs["eval"] = [paths.eval_dir + "/" + name for name in ("summary.json", "per_patient.csv", "per_slide.csv")]
        inputs["overlays"] = expand(paths.prediction_overlay, arm=list(arms), slide=TEST)
    return inputs


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(paths.report_html, caption="../report/report.rst", category="Report"),
        figures=report(
            directory(paths.report_figures),
            patterns=["{section}/{name}.png"],
            caption="../report/figure.rst",
            category="{section}",
            labels={"figure": "{name}"},
        ),
    params:
        # the results folder, derived from an input (R/tiles/summary.tsv) so it follows storage prefixes
        results=lambda w, input: os.path.dirname(os.path.dirname(input.tiling_summary)),
    log:
        log_for("report", "all"),
    benchmark:
        bench_for("report", "all")
    conda:
        ENV
    shell:
        "sedm report --config {input.config:q} --samples {input.samples:q} --results {params.results:q}"
        " --out {output.html:q} --figures-dir {output.figures:q} 2> {log:q}"
